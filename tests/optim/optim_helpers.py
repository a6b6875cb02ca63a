"""Shared builders for the optimizer tests: seeded params, grads and a torch twin to compare."""

from __future__ import annotations

from collections.abc import Callable

import torch

# Odd sizes, a 0-d and an empty tensor, and one larger than the CPU chunk (1 << 15) so a tensor
# spans several chunks with a ragged tail.
SHAPES: list[tuple[int, ...]] = [(7,), (), (0,), (33, 17), (3, 5, 7), (1000,), (70001,), (2, 1)]


def make_params(
    seed: int, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(s, generator=gen).to(dtype=dtype, device=device).requires_grad_()
        for s in SHAPES
    ]


def clone_params(params: list[torch.Tensor], device: str | None = None) -> list[torch.Tensor]:
    return [p.detach().clone().to(device or p.device).requires_grad_() for p in params]


def groups(params: list[torch.Tensor], extra: list[dict[str, object]]) -> list[dict[str, object]]:
    """Split params into len(extra) groups with their own hyperparameters."""
    k = len(extra)
    return [{"params": params[i::k], **extra[i]} for i in range(k)]


def grads_for_step(
    step: int, params: list[torch.Tensor], scale: float = 1.0
) -> list[torch.Tensor | None]:
    """Seeded random grads; some are None on some steps and the last param never gets one."""
    gen = torch.Generator().manual_seed(10_000 + step)
    out: list[torch.Tensor | None] = []
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=gen) * scale
        skip = i == len(params) - 1 or (step + i) % 5 == 0
        out.append(None if skip else g.to(dtype=p.dtype, device=p.device))
    return out


def set_grads(params: list[torch.Tensor], grads: list[torch.Tensor | None]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else g.clone()


def torch_clip(
    params: list[torch.Tensor], max_norm: float | None, clip_value: float | None
) -> None:
    if clip_value is not None:
        torch.nn.utils.clip_grad_value_(params, clip_value)
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def run(
    params: list[torch.Tensor],
    opt: torch.optim.Optimizer,
    steps: range,
    before_step: Callable[[], None] | None = None,
    scale: float = 1.0,
) -> None:
    for k in steps:
        set_grads(params, grads_for_step(k, params, scale))
        if before_step is not None:
            before_step()
        opt.step()


def assert_close(a: list[torch.Tensor], b: list[torch.Tensor], rtol: float, atol: float) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(
            x.detach().float().cpu(), y.detach().float().cpu(), rtol=rtol, atol=atol
        )
