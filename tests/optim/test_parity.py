"""FusedAdamW / FusedSGD must agree with clip_grad_*_ + torch.optim over 100+ steps."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from tests.optim.optim_helpers import (
    assert_close,
    clone_params,
    groups,
    make_params,
    run,
    torch_clip,
)
from workbench.optim import FusedAdamW, FusedSGD

IMPLS = ["fused", "reference"]
CLIPS = [(None, None), (0.5, None), (None, 0.8), (2.0, 0.8)]  # (max_grad_norm, clip_value)
ADAM_GROUPS = [
    {"lr": 1e-2, "weight_decay": 0.1, "betas": (0.9, 0.999), "eps": 1e-8},
    {"lr": 3e-3, "weight_decay": 0.0, "betas": (0.8, 0.99), "eps": 1e-6},
    {"lr": 5e-3, "weight_decay": 0.02, "betas": (0.3, 0.95), "eps": 1e-7},  # lerp's other branch
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("max_norm", "clip_value"), CLIPS)
@pytest.mark.parametrize("decoupled", [True, False])
def test_adam_matches_torch(
    impl: str, max_norm: float | None, clip_value: float | None, decoupled: bool
) -> None:
    ours, theirs = make_params(1), make_params(1)
    opt = FusedAdamW(
        groups(ours, ADAM_GROUPS),
        decoupled_weight_decay=decoupled,
        max_grad_norm=max_norm,
        clip_value=clip_value,
        implementation=impl,  # type: ignore[arg-type]
    )
    ref_cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    ref = ref_cls(groups(theirs, ADAM_GROUPS), foreach=False)
    run(ours, opt, range(120))
    run(theirs, ref, range(120), lambda: torch_clip(theirs, max_norm, clip_value))
    # Same operations in the same order, but the norm is summed in float64 (torch: float32):
    # the clip coefficient differs in its last bits, which Adam's normalisation can carry to
    # ~1e-6 absolute over 120 steps of lr 1e-2 on params that cross zero.
    assert_close(ours, theirs, rtol=2e-5, atol=1e-5)
    if max_norm is not None:
        assert opt.last_grad_norm is not None and opt.last_grad_norm > 0


SGD_GROUPS: list[dict[str, object]] = [
    {"lr": 1e-2, "momentum": 0.9, "weight_decay": 0.01, "nesterov": True},
    {"lr": 3e-2, "momentum": 0.5, "dampening": 0.3, "weight_decay": 0.0},
    {"lr": 2e-2, "momentum": 0.0, "weight_decay": 0.05},
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("max_norm", "clip_value"), CLIPS)
def test_sgd_matches_torch(impl: str, max_norm: float | None, clip_value: float | None) -> None:
    ours, theirs = make_params(2), make_params(2)
    opt = FusedSGD(
        groups(ours, SGD_GROUPS),
        max_grad_norm=max_norm,
        clip_value=clip_value,
        implementation=impl,  # type: ignore[arg-type]
    )
    ref = torch.optim.SGD(groups(theirs, SGD_GROUPS), foreach=False)
    run(ours, opt, range(110))
    run(theirs, ref, range(110), lambda: torch_clip(theirs, max_norm, clip_value))
    assert_close(ours, theirs, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls", [FusedAdamW, FusedSGD])
def test_low_precision_fused_matches_reference(dtype: torch.dtype, cls: type) -> None:
    # Both paths compute in float32 with float32 state and round the param once per step, so
    # they agree up to an ulp of the param dtype where an FMA tips a rounding.
    kw = {"lr": 1e-2, "max_grad_norm": 3.0, "clip_value": 1.5}
    if cls is FusedSGD:
        kw["momentum"] = 0.9
    a, b = make_params(3, dtype), make_params(3, dtype)
    opt_a, opt_b = cls(a, implementation="fused", **kw), cls(b, implementation="reference", **kw)
    run(a, opt_a, range(100))
    run(b, opt_b, range(100))
    assert all(
        s["exp_avg" if cls is FusedAdamW else "momentum_buffer"].dtype == torch.float32
        for s in opt_a.state.values()
    )
    ulp = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    assert_close(a, b, rtol=ulp, atol=ulp)


def test_low_precision_first_step_is_fp32_step_rounded() -> None:
    # One step from identical values: a bf16 param must equal torch's fp32 update, rounded.
    p32 = make_params(4)
    p16 = [p.detach().bfloat16().float().requires_grad_() for p in p32]
    bf = [p.detach().bfloat16().requires_grad_() for p in p32]
    ref = torch.optim.AdamW(p16, lr=1e-2, foreach=False)
    opt = FusedAdamW(bf, lr=1e-2)
    run(p16, ref, range(1))
    for p, g in zip(bf, [q.grad for q in p16], strict=True):
        p.grad = None if g is None else g.bfloat16()
    opt.step()
    assert_close(bf, [p.detach().bfloat16() for p in p16], rtol=2.0**-7, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls", [FusedAdamW, FusedSGD])
def test_state_dict_resume_gives_same_trajectory(impl: str, cls: type) -> None:
    kw: dict[str, object] = {"lr": 1e-2, "max_grad_norm": 1.0, "implementation": impl}
    if cls is FusedSGD:
        kw["momentum"] = 0.9
    straight = make_params(5)
    opt = cls(groups(straight, [{}, {"lr": 3e-3}]), **kw)
    run(straight, opt, range(50))
    saved_params = clone_params(straight)
    saved_state = copy.deepcopy(opt.state_dict())
    run(straight, opt, range(50, 100))

    resumed = saved_params
    opt2 = cls(groups(resumed, [{}, {"lr": 3e-3}]), **kw)
    opt2.load_state_dict(saved_state)
    run(resumed, opt2, range(50, 100))
    assert_close(straight, resumed, rtol=0, atol=0)


def test_state_dict_interoperates_with_torch_adamw() -> None:
    # Ours -> torch and torch -> ours mid-training: both continue on the same trajectory.
    a, b = make_params(6), make_params(6)
    ours = FusedAdamW(a, lr=1e-2)
    theirs = torch.optim.AdamW(b, lr=1e-2, foreach=False)
    run(a, ours, range(30))
    run(b, theirs, range(30))
    ours_sd, theirs_sd = copy.deepcopy(ours.state_dict()), copy.deepcopy(theirs.state_dict())
    assert (
        set(ours_sd["state"][0]) == set(theirs_sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    )
    swapped_theirs = torch.optim.AdamW(b, lr=1e-2, foreach=False)
    swapped_theirs.load_state_dict(ours_sd)
    swapped_ours = FusedAdamW(a, lr=1e-2)
    swapped_ours.load_state_dict(theirs_sd)
    assert all(s["step"].dtype == torch.float32 for s in swapped_ours.state.values())
    run(a, swapped_ours, range(30, 60))
    run(b, swapped_theirs, range(30, 60))
    assert_close(a, b, rtol=2e-5, atol=2e-6)


def test_low_precision_state_survives_load_at_full_precision() -> None:
    a = make_params(7, torch.bfloat16)
    opt = FusedAdamW(a, lr=1e-2)
    run(a, opt, range(5))
    sd = copy.deepcopy(opt.state_dict())
    opt2 = FusedAdamW(a, lr=1e-2)
    opt2.load_state_dict(sd)
    for i, p in enumerate(a):
        if p in opt2.state:
            assert opt2.state[p]["exp_avg"].dtype == torch.float32
            torch.testing.assert_close(
                opt2.state[p]["exp_avg_sq"], sd["state"][i]["exp_avg_sq"], rtol=0, atol=0
            )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls", [FusedAdamW, FusedSGD])
def test_cuda_matches_cpu(dtype: torch.dtype, cls: type) -> None:
    from workbench.optim import backend_info

    kw: dict[str, object] = {
        "lr": 1e-2,
        "max_grad_norm": 2.0,
        "clip_value": 1.2,
        "weight_decay": 0.05,
    }
    if cls is FusedSGD:
        kw.update(momentum=0.9, nesterov=True)
    cpu = make_params(8, dtype)
    gpu = clone_params(cpu, "cuda")
    opt_c = cls(groups(cpu, [{}, {"lr": 3e-3}]), **kw)
    opt_g = cls(groups(gpu, [{}, {"lr": 3e-3}]), **kw)
    run(cpu, opt_c, range(100))
    run(gpu, opt_g, range(100))
    assert backend_info()["cuda"] == "fused", backend_info()["reason"]
    tol = {torch.float32: 2e-5, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[dtype]
    assert_close(cpu, gpu, rtol=tol, atol=tol)
    assert opt_c.last_grad_norm == pytest.approx(opt_g.last_grad_norm, rel=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_torch_adamw() -> None:
    ours, theirs = make_params(9, device="cuda"), make_params(9, device="cuda")
    opt = FusedAdamW(groups(ours, ADAM_GROUPS), max_grad_norm=0.5)
    ref = torch.optim.AdamW(groups(theirs, ADAM_GROUPS), fused=True)
    run(ours, opt, range(100))
    run(theirs, ref, range(100), lambda: torch_clip(theirs, 0.5, None))
    assert_close(ours, theirs, rtol=5e-5, atol=5e-6)


@pytest.mark.parametrize("cls", [FusedAdamW, FusedSGD])
def test_mixed_list_routes_the_rest_to_reference(cls: type) -> None:
    # float64 and non-contiguous params are not fusable: in one step they take the reference
    # path while the others take the kernels, and the clip norm sums both parts.
    def mixed(seed: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        extra = [
            torch.randn(40, generator=gen, dtype=torch.float64),
            torch.randn(6, 9, generator=gen).t(),
        ]
        return make_params(seed) + [t.requires_grad_() for t in extra]

    ours, theirs = mixed(15), mixed(15)
    assert not ours[-1].is_contiguous()
    kw: dict[str, Any] = {"lr": 1e-2, "weight_decay": 0.05}
    if cls is FusedSGD:
        kw["momentum"] = 0.9
    opt = cls(ours, max_grad_norm=2.0, clip_value=0.8, **kw)
    ref_cls = torch.optim.AdamW if cls is FusedAdamW else torch.optim.SGD
    ref = ref_cls(theirs, foreach=False, **kw)
    run(ours, opt, range(30))
    run(theirs, ref, range(30), lambda: torch_clip(theirs, 2.0, 0.8))
    assert_close(ours, theirs, rtol=2e-5, atol=1e-5)
