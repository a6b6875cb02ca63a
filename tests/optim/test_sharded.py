"""The fused optimizers under torch.distributed (gloo, 2 processes) against one process.

FSDP2 hands the optimizer DTensor params with uneven and empty shards; DDP hands it plain,
already-averaged gradients; ``process_group`` covers plain params that differ per rank. In every
case the losses, final weights and ``last_grad_norm`` must equal one process on the same global
batch, and the norm must be the same on every rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tests.optim.dist_helpers import init, load, save, spawn
from workbench.optim import FusedAdamW, FusedSGD

STEPS = 5
CASES: list[tuple[str, str]] = [
    ("adamw", "fused"),
    ("adamw", "reference"),
    ("sgd", "fused"),
    ("sgd", "reference"),
]


def _model() -> nn.Module:
    # Linear(32, 7) splits 4/3 over two ranks; Linear(7, 1) leaves rank 1 empty shards.
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 7), nn.Tanh(), nn.Linear(7, 1))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, 8, 16, generator=gen), torch.randn(STEPS, 8, 1, generator=gen)


def _optimizer(params: Any, kind: str, impl: str, **kw: Any) -> FusedAdamW | FusedSGD:
    if kind == "adamw":
        return FusedAdamW(params, lr=0.05, max_grad_norm=0.1, implementation=impl, **kw)  # type: ignore[arg-type]
    return FusedSGD(params, lr=0.1, momentum=0.9, max_grad_norm=0.1, implementation=impl, **kw)  # type: ignore[arg-type]


def _single(kind: str, impl: str) -> dict[str, np.ndarray]:
    model = _model()
    opt = _optimizer(model.parameters(), kind, impl)
    xs, ys = _data()
    losses, norms = [], []
    for s in range(STEPS):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(xs[s]), ys[s])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        norms.append(opt.last_grad_norm)
    params = [p.detach().numpy().copy() for p in model.parameters()]
    return {"loss": np.array(losses), "norm": np.array(norms), **_named(params)}


def _named(params: list[Any]) -> dict[str, np.ndarray]:
    return {f"p{i}": np.asarray(p) for i, p in enumerate(params)}


def _worker(rank: int, ws: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    init(rank, ws, port)
    xs, ys = _data()
    lo, hi = rank * 4, rank * 4 + 4
    runs = [(f"fsdp-{k}-{i}", k, i) for k, i in CASES] + [("ddp-adamw-fused", "adamw", "fused")]
    for name, kind, impl in runs:
        model = _model()
        if name.startswith("fsdp"):
            mesh = init_device_mesh("cpu", (ws,))
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            wrapped: nn.Module = model
        else:
            wrapped = DDP(model)
        opt = _optimizer(model.parameters(), kind, impl)
        losses, norms = [], []
        for s in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.mse_loss(wrapped(xs[s, lo:hi]), ys[s, lo:hi])
            loss.backward()
            opt.step()
            total = loss.detach().clone()
            dist.all_reduce(total)
            losses.append(float(total) / ws)
            norms.append(opt.last_grad_norm)
        full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
        params = [p.detach().numpy().copy() for p in full]
        save(Path(out) / f"{name}-{rank}.npz", loss=losses, norm=norms, **_named(params))

    # Plain params that differ per rank: rank r owns half of the tensors.
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(n, generator=gen) for n in (5, 300, 1, 70001)]
    mine = [nn.Parameter(torch.zeros_like(g)) for g in grads[rank::ws]]
    for p, g in zip(mine, grads[rank::ws], strict=True):
        p.grad = g.clone()
    opt = FusedAdamW(mine, lr=0.1, max_grad_norm=1.0, process_group=dist.group.WORLD)
    opt.step()
    save(Path(out) / f"pg-{rank}.npz", norm=[opt.last_grad_norm])
    # both ranks done before either tears gloo down: a rank that exits while its peer is still
    # in destroy_process_group aborted the peer now and then ("terminate called without an
    # active exception", SIGABRT)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp2_and_ddp_match_one_process(tmp_path: Path) -> None:
    spawn(_worker, 2, str(tmp_path))
    worst = 0.0
    for kind, impl in [*CASES, ("adamw", "fused")]:
        ref = _single(kind, impl)
        prefixes = ["ddp"] if (kind, impl) == ("adamw", "fused") else []
        prefixes.append("fsdp")
        for prefix in prefixes:
            r0, r1 = (load(tmp_path / f"{prefix}-{kind}-{impl}-{r}.npz") for r in (0, 1))
            # The same norm on every rank, bit for bit, and the single-process norm.
            assert np.array_equal(r0["norm"], r1["norm"]), (prefix, kind, impl)
            np.testing.assert_allclose(r0["norm"], ref["norm"], rtol=1e-6, atol=0)
            assert ref["norm"].max() > 0.1  # clipping was active
            for k, v in ref.items():
                np.testing.assert_allclose(r0[k], v, rtol=0, atol=1e-6, err_msg=f"{prefix} {k}")
                worst = max(worst, float(np.abs(r0[k] - v).max()))
                np.testing.assert_array_equal(r0[k], r1[k])
    print(f"worst param/loss diff vs one process: {worst:.2e}")
    assert worst <= 1e-6

    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(n, generator=gen) for n in (5, 300, 1, 70001)]
    expected = float(torch.cat(grads).double().norm())
    pg0, pg1 = (load(tmp_path / f"pg-{r}.npz")["norm"][0] for r in (0, 1))
    assert pg0 == pg1
    assert pg0 == pytest.approx(expected, rel=1e-12)


def test_fake_impls_trace_without_data() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from workbench.optim import _build

    if not _build.ensure_loaded():
        pytest.skip("fused kernels did not build here")
    with FakeTensorMode():
        grads = [torch.randn(3), torch.randn(2, 2)]
        sumsq = torch.ops.workbench_optim.grad_sumsq(grads, float("inf"))
        params = [torch.zeros(3), torch.zeros(2, 2)]
        states = [torch.zeros(3), torch.zeros(2, 2)]
        torch.ops.workbench_optim.sgd_step(
            params, grads, states, 0.1, 0.9, 0.0, 0.0, False, True, float("inf"), sumsq, 1.0
        )
    assert sumsq.dtype == torch.float64 and sumsq.shape == ()
    meta = torch.ops.workbench_optim.grad_sumsq([torch.empty(4, device="meta")], 1.0)
    assert meta.device.type == "meta"
