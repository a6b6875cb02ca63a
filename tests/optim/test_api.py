"""The torch.optim contract, argument checks, the build fallback and the nvcc compile check."""

from __future__ import annotations

import math
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from tests.optim.optim_helpers import make_params, run
from workbench.optim import FusedAdamW, FusedSGD, _build, backend_info, kernel_sources_dir


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1.0}, "Invalid learning rate"),
        ({"eps": -1.0}, "Invalid epsilon"),
        ({"betas": (1.0, 0.999)}, "Invalid beta parameter at index 0"),
        ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1"),
        ({"weight_decay": -0.1}, "Invalid weight_decay"),
        ({"max_grad_norm": -1.0}, "Invalid max_grad_norm"),
        ({"clip_value": 0.0}, "Invalid clip_value"),
        ({"implementation": "cuda"}, "Invalid implementation"),
    ],
)
def test_adamw_rejects_bad_hyperparameters(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FusedAdamW([torch.nn.Parameter(torch.ones(2))], **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1.0}, "Invalid learning rate"),
        ({"momentum": -0.5}, "Invalid momentum"),
        ({"weight_decay": -0.1}, "Invalid weight_decay"),
        ({"nesterov": True}, "Nesterov momentum requires"),
        ({"max_grad_norm": float("nan")}, "Invalid max_grad_norm"),
    ],
)
def test_sgd_rejects_bad_hyperparameters(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FusedSGD([torch.nn.Parameter(torch.ones(2))], **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [FusedAdamW, FusedSGD])
def test_sparse_gradients_are_refused(cls: type) -> None:
    emb = torch.nn.Embedding(10, 4, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    opt = cls(emb.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()


def test_lr_scheduler_drives_the_step() -> None:
    ours, theirs = make_params(11), make_params(11)
    opt = FusedSGD(ours, lr=0.1, momentum=0.9)
    ref = torch.optim.SGD(theirs, lr=0.1, momentum=0.9, foreach=False)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref, step_size=3, gamma=0.5)
    for k in range(10):
        run(ours, opt, range(k, k + 1))
        run(theirs, ref, range(k, k + 1))
        sched.step()
        ref_sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-6)


def test_step_with_closure_returns_loss() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = FusedAdamW([w], lr=0.1)

    def closure() -> float:
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return float(loss.detach())

    assert opt.step(closure) == pytest.approx(5.0)
    assert torch.all(w.detach().abs() < torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("cls", [FusedAdamW, FusedSGD])
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_a_step_bumps_the_version_of_what_it_wrote_as_torch_optim_does(
    cls: type, impl: str
) -> None:
    """The kernels write through data pointers; ``Tensor._version`` must still tell a stepped
    tensor from an untouched one (caches are keyed on it), as with ``torch.optim``."""
    gen = torch.Generator().manual_seed(3)
    for opt_cls in (cls, torch.optim.AdamW if cls is FusedAdamW else torch.optim.SGD):
        stepped, idle = (torch.nn.Parameter(torch.randn(64, generator=gen)) for _ in range(2))
        kw: dict[str, object] = {"momentum": 0.9} if opt_cls in (FusedSGD, torch.optim.SGD) else {}
        if opt_cls is cls:
            kw["implementation"] = impl
        opt = opt_cls([stepped, idle], lr=1e-2, **kw)
        stepped.grad = torch.randn(64, generator=gen)
        for _ in range(2):
            before = stepped._version, idle._version
            opt.step()
            assert stepped._version > before[0] and idle._version == before[1], opt_cls
            state = [t for t in opt.state[stepped].values() if t.ndim]
            assert opt_cls is not cls or (state and all(t._version > 0 for t in state))


def test_grads_are_read_not_clipped_in_place() -> None:
    w = torch.nn.Parameter(torch.ones(4))
    opt = FusedAdamW([w], max_grad_norm=1e-3, clip_value=0.5)
    g = torch.tensor([3.0, -4.0, 0.25, 1.0])
    w.grad = g.clone()
    opt.step()
    torch.testing.assert_close(w.grad, g, rtol=0, atol=0)
    # The norm is that of the value-clipped grads: [0.5, -0.5, 0.25, 0.5].
    assert opt.last_grad_norm == pytest.approx(math.sqrt(0.25 * 3 + 0.0625))


def test_infinite_max_norm_measures_without_clipping() -> None:
    a, b = make_params(12), make_params(12)
    opt_a = FusedAdamW(a, max_grad_norm=math.inf)
    opt_b = FusedAdamW(b)
    run(a, opt_a, range(3))
    run(b, opt_b, range(3))
    assert opt_a.last_grad_norm is not None and opt_b.last_grad_norm is None
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_nonfinite_norm_proceeds_like_torch(impl: str) -> None:
    # error_if_nonfinite=False semantics: a NaN grad gives a NaN norm and NaN params.
    w = torch.nn.Parameter(torch.ones(3))
    opt = FusedAdamW([w], max_grad_norm=1.0, implementation=impl)  # type: ignore[arg-type]
    w.grad = torch.tensor([1.0, float("nan"), 1.0])
    opt.step()
    assert math.isnan(opt.last_grad_norm or 0.0)
    assert torch.isnan(w.detach()).all()


def test_fused_kernels_are_active_on_cpu() -> None:
    info = backend_info(build=True)
    assert info["cpu"] == "fused", info["reason"]
    assert info["build_dir"] and Path(info["build_dir"]).is_dir()


@pytest.fixture
def fresh_backend() -> object:
    _build._reset_for_tests()
    yield
    _build._reset_for_tests()


@pytest.mark.usefixtures("fresh_backend")
def test_env_var_forces_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_build.ENV_IMPL, "reference")
    w = torch.nn.Parameter(torch.ones(3))
    opt = FusedAdamW([w], lr=0.1)
    w.grad = torch.ones(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
    info = backend_info()
    assert info["cpu"] == "reference"
    assert _build.ENV_IMPL in str(info["reason"])


@pytest.mark.usefixtures("fresh_backend")
def test_failed_build_warns_once_and_falls_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(_build, "kernel_sources_dir", lambda: tmp_path)
    a, b = make_params(13), make_params(13)
    opt_a = FusedAdamW(a, max_grad_norm=1.0)
    opt_b = FusedAdamW(b, max_grad_norm=1.0, implementation="reference")
    with pytest.warns(RuntimeWarning, match="falling back to the pure-torch reference"):
        run(a, opt_a, range(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(a, opt_a, range(1, 5))
    run(b, opt_b, range(5))
    assert backend_info()["cpu"] == "reference"
    assert "missing" in str(backend_info()["reason"])
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_sources_are_found() -> None:
    names = {p.name for p in kernel_sources_dir().iterdir()}
    assert {"optim_math.h", "optim_cpu.cpp", "optim_cuda.cu", "optim_cuda_ops.cpp"} <= names


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_cuda_driver_compiles_with_nvcc(tmp_path: Path) -> None:
    # The .cu includes no torch header, so this needs only the CUDA toolkit, not a GPU.
    src = kernel_sources_dir() / "optim_cuda.cu"
    cmd = ["nvcc", "-std=c++17", "-O3", "-arch=sm_90", "-c", str(src), "-o", str(tmp_path / "o.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o.o").stat().st_size > 0


@pytest.mark.parametrize("cls", [FusedAdamW, FusedSGD])
def test_clipping_options_are_instance_attributes_not_state(cls: type) -> None:
    # The documented deviation from torch.optim: clipping is global over all groups, so its
    # options live on the optimizer, not in param_groups, and a state dict does not carry them.
    a = make_params(14)
    opt = cls(a, lr=0.1, max_grad_norm=1.0, clip_value=0.5, implementation="reference")
    run(a, opt, range(2))
    sd = opt.state_dict()
    options = {"max_grad_norm", "clip_value", "implementation"}
    assert all(options.isdisjoint(group) for group in sd["param_groups"])
    other = cls(a, lr=0.1, max_grad_norm=2.0)
    other.load_state_dict(sd)
    assert (other.max_grad_norm, other.clip_value, other.implementation) == (2.0, None, "fused")
