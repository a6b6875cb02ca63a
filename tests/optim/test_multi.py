"""FusedAdamW's one-call path (``adam_multi``): every group and the clipping norm in one
parallel region on the CPU. It must agree with clip_grad_norm_ + torch.optim, give the per-group
path's results bit for bit, and step aside (to that path) whenever it cannot take a step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from tests.optim.optim_helpers import SHAPES, assert_close, groups, make_params
from workbench.optim import FusedAdamW
from workbench.optim import _functional as F

pytestmark = pytest.mark.skipif(
    not F._fused_ok(torch.device("cpu")), reason="the fused CPU kernels did not build"
)

GROUPS: list[dict[str, object]] = [
    {"lr": 1e-2, "weight_decay": 0.1, "betas": (0.9, 0.999), "eps": 1e-8},
    {"lr": 3e-3, "weight_decay": 0.0, "betas": (0.3, 0.95), "eps": 1e-6},
]


def full_grads(params: list[torch.Tensor], step: int, scale: float = 1.0) -> None:
    """Every param gets a seeded random grad (the one-call path needs them all)."""
    gen = torch.Generator().manual_seed(500 + step)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=gen) * scale).to(p.dtype)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records each adam_multi call: True when it took the step, False when it stepped aside."""
    seen: list[bool] = []
    real = F.adam_multi

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor | None:
        out = real(*args, **kwargs)
        seen.append(out is not None)
        return out

    monkeypatch.setattr(F, "adam_multi", spy)
    return seen


@pytest.mark.parametrize("max_norm", [None, 0.5, float("inf")])
@pytest.mark.parametrize("decoupled", [True, False])
def test_one_call_matches_torch(calls: list[bool], max_norm: float | None, decoupled: bool) -> None:
    ours, theirs = make_params(3), make_params(3)
    opt = FusedAdamW(groups(ours, GROUPS), decoupled_weight_decay=decoupled, max_grad_norm=max_norm)
    ref_cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    ref = ref_cls(groups(theirs, GROUPS), foreach=False)
    for k in range(40):
        full_grads(ours, k, scale=3.0)
        full_grads(theirs, k, scale=3.0)
        opt.step()
        if max_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
            assert opt.last_grad_norm == pytest.approx(float(norm), rel=1e-5)
        ref.step()
    assert calls == [True] * 39  # every step but the first, which creates the state
    assert_close(ours, theirs, rtol=2e-5, atol=1e-5)
    for p, q in zip(ours, theirs, strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[p][key], ref.state[q][key], rtol=2e-5, atol=1e-6)
        assert float(opt.state[p]["step"]) == float(ref.state[q]["step"]) == 40


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_one_call_equals_the_per_group_path_bit_for_bit(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = make_params(5, dtype), make_params(5, dtype)
    opt_a = FusedAdamW(groups(a, GROUPS), max_grad_norm=1.0, clip_value=0.7)
    opt_b = FusedAdamW(groups(b, GROUPS), max_grad_norm=1.0, clip_value=0.7)
    monkeypatch.setattr(opt_b, "_multi_step", lambda: False)  # b: norm call + one call a group
    for k in range(6):
        full_grads(a, k)
        full_grads(b, k)
        opt_a.step()
        opt_b.step()
        assert opt_a.last_grad_norm == opt_b.last_grad_norm
    assert opt_a._multi_cache is not None
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_thread_count_does_not_change_the_step() -> None:
    # One tensor larger than many chunks, so two threads split the work.
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            ps = [torch.randn(300_000, generator=torch.Generator().manual_seed(1)), torch.ones(5)]
            ps = [p.requires_grad_() for p in ps]
            opt = FusedAdamW(ps, lr=1e-2, max_grad_norm=0.1)
            for k in range(3):
                full_grads(ps, k)
                opt.step()
            results.append(([p.detach().clone() for p in ps], opt.last_grad_norm))
    finally:
        torch.set_num_threads(old)
    (p1, n1), (p2, n2) = results
    assert n1 == n2
    for x, y in zip(p1, p2, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def _twin(
    setup: Callable[[list[torch.Tensor], FusedAdamW, int], None],
    make: Callable[[int], list[torch.Tensor]] = make_params,
    seed: int = 7,
    steps: int = 8,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Ours and torch's clip+AdamW over ``steps`` steps on ``make(seed)`` params; ``setup`` may
    disturb ours before a step."""
    ours, theirs = make(seed), make(seed)
    opt = FusedAdamW(groups(ours, GROUPS), max_grad_norm=1.0)
    ref = torch.optim.AdamW(groups(theirs, GROUPS), foreach=False)
    for k in range(steps):
        full_grads(ours, k)
        full_grads(theirs, k)
        setup(ours, opt, k)
        for q, p in zip(theirs, ours, strict=True):  # the same grads were kept / dropped
            q.grad = None if p.grad is None else q.grad
        opt.step()
        torch.nn.utils.clip_grad_norm_([q for q in theirs if q.grad is not None], 1.0)
        ref.step()
    return ours, theirs


def test_a_missing_grad_takes_the_per_group_path(calls: list[bool]) -> None:
    def drop(ours: list[torch.Tensor], opt: FusedAdamW, k: int) -> None:
        if k == 4:
            ours[3].grad = None  # torch skips this param, its step count included

    ours, theirs = _twin(drop)
    assert_close(ours, theirs, rtol=2e-5, atol=1e-5)
    assert sum(calls) >= 6


def test_replaced_state_is_picked_up(calls: list[bool]) -> None:
    def reload(ours: list[torch.Tensor], opt: FusedAdamW, k: int) -> None:
        if k == 3:  # new state tensors with the same values (as a checkpoint load does)
            opt.load_state_dict(opt.state_dict())
        if k == 5:  # one tensor swapped inside a param's state (as an undo may do)
            p = ours[4]
            opt.state[p]["exp_avg"] = opt.state[p]["exp_avg"].clone()

    ours, theirs = _twin(reload)
    assert_close(ours, theirs, rtol=2e-5, atol=1e-5)
    assert sum(calls) >= 6


def test_tensors_the_kernels_refuse_send_the_step_to_the_reference_path(
    calls: list[bool],
) -> None:
    # A float64 param cannot go to the kernels: the one call steps aside without a change and
    # the per-group path routes that tensor to the reference implementation.
    def f64(seed: int) -> list[torch.Tensor]:
        ps = make_params(seed)
        ps[3] = ps[3].detach().double().requires_grad_()
        return ps

    ours, theirs = _twin(lambda *_: None, make=f64, seed=9, steps=5)  # every grad present
    assert calls and not any(calls)
    assert_close(ours, theirs, rtol=2e-5, atol=1e-5)


def test_shapes_cover_empty_and_scalar_tensors() -> None:
    assert (0,) in SHAPES and () in SHAPES  # the one-call path sees them in every test above


def test_step_keeping_writes_into_the_spares_and_swaps() -> None:
    """``step_keeping``: the same step as ``step()``, bit for bit, with the values from before
    it left in the spares; a param without spares makes it change nothing and say so."""
    params = make_params(seed=41)
    twins = [p.detach().clone().requires_grad_() for p in params]
    ours = FusedAdamW(groups(params, GROUPS), max_grad_norm=0.5)
    ref = FusedAdamW(groups(twins, GROUPS), max_grad_norm=0.5)
    for step in range(3):
        full_grads(params, step)
        full_grads(twins, step)
        if step == 0:  # the first step creates the moments
            ours.step()
            ref.step()
            continue
        before = [p.detach().clone() for p in params]
        moments = [ours.state[p]["exp_avg_sq"].clone() for p in params]
        spares = {
            p: (
                torch.empty_like(p.detach()),
                torch.empty_like(ours.state[p]["exp_avg"]),
                torch.empty_like(ours.state[p]["exp_avg_sq"]),
            )
            for p in params
        }
        partial = dict(list(spares.items())[1:])
        assert not ours.step_keeping(partial)  # one param has none: nothing changed
        assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
        assert ours.step_keeping(spares)
        ref.step()
        for p, q, b, m in zip(params, twins, before, moments, strict=True):
            assert torch.equal(p, q)
            assert torch.equal(ours.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"])
            assert torch.equal(spares[p][0], b) and torch.equal(spares[p][2], m)
        assert ours.last_grad_norm == ref.last_grad_norm
