"""The optimizer math in one functional entry per rule, fused kernels or pure torch.

The boundary: these functions take flat lists of tensors and plain hyperparameters, update
params and state in place, and know nothing of ``param_groups`` or ``state_dict`` (the
optimizer classes in :mod:`workbench.optim.adamw` and :mod:`workbench.optim.sgd` do). Each
``implementation="fused"`` call routes the tensors the kernels accept (contiguous float32,
bfloat16 or float16 on a device whose kernels loaded) to them and everything else to the
reference path, so results never depend on whether the build succeeded. That decision is made
in one place, :func:`_route`, for every op.

Clipping is passed as ``clip_value`` (elementwise clamp, applied first) and ``grad_sumsq`` +
``max_norm`` (global norm clipping, scale ``min(1, max_norm / (norm + 1e-6))`` as in
``torch.nn.utils.clip_grad_norm_``). Gradients are read, never written.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
from torch import Tensor

from . import _build

__all__ = ["adam", "adam_multi", "clip_coefficient", "grad_sumsq", "sgd"]

Implementation = Literal["fused", "reference"]
_FUSABLE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_NO_CLIP = math.inf


def _fused_ok(device: torch.device) -> bool:
    if not _build.ensure_loaded():
        return False
    if device.type == "cpu":
        return True
    return device.type == "cuda" and _build.backend_info()["cuda"] == "fused"


def _fusable(p: Tensor, g: Tensor | None = None, *states: Tensor) -> bool:
    """Whether the kernels take this param (or grad), its grad and its float32 state."""
    if p.dtype not in _FUSABLE_DTYPES or not p.is_contiguous():
        return False
    if g is not None and (g.dtype != p.dtype or not g.is_contiguous() or g.shape != p.shape):
        return False
    for s in states:  # noqa: SIM110 -- a plain loop: this runs for every tensor of every step
        if s.dtype != torch.float32 or not s.is_contiguous():
            return False
    return True


def _route(
    tensors: Sequence[Tensor], fusable: Callable[[int], bool], implementation: Implementation
) -> Iterator[tuple[torch.device, list[int], list[int]]]:
    """Decide, per device, which tensors go to the fused op and which to the reference path.

    Yields ``(device, fused, rest)``: indices into ``tensors`` (in ascending order) for one
    fused call on ``device`` and for the reference path. ``fused`` is empty under
    ``"reference"``, when no tensor passes ``fusable(i)``, or when the device's kernels did not
    load; then ``rest`` holds all of the device's tensors. The kernels are built (on first use)
    only when a fused call is possible.
    """
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        by_device[t.device].append(i)
    for device, idx in by_device.items():
        if implementation == "fused":
            fused = [i for i in idx if fusable(i)]
            if fused and _fused_ok(device):
                taken = set(fused)
                yield device, fused, [i for i in idx if i not in taken]
                continue
        yield device, [], idx


def _clip_args(
    clip_value: float | None, sumsq: Tensor | None, max_norm: float | None, device: torch.device
) -> tuple[float, Tensor | None, float]:
    """The clipping arguments as the fused ops take them: no clamp is ``inf``, no norm ``-1``."""
    norm = None if sumsq is None or max_norm is None else sumsq.to(device)
    return (
        _NO_CLIP if clip_value is None else float(clip_value),
        norm,
        -1.0 if max_norm is None else float(max_norm),
    )


def _clip_grad(g: Tensor, clip_value: float | None, coef: Tensor | None) -> Tensor:
    # In float32 like the kernels: clipped low-precision grads are never rounded back.
    g = g.float()
    if clip_value is not None:
        g = g.clamp(-clip_value, clip_value)
    if coef is not None:
        g = g * coef.to(device=g.device, dtype=torch.float32)
    return g


def grad_sumsq(
    grads: Sequence[Tensor],
    clip_value: float | None = None,
    implementation: Implementation = "fused",
) -> Tensor:
    """Sum of squares of all gradients (after the optional clamp), accumulated in float64.

    One fused pass per device; the result lives on the first gradient's device, so the norm
    never has to travel to the host.

    Parameters
    ----------
    grads
        Dense gradients, any mix of devices and float dtypes.
    clip_value
        Clamp each element to ``[-clip_value, clip_value]`` before squaring.
    implementation
        ``"fused"`` uses the kernels where they loaded, ``"reference"`` pure torch.

    Returns
    -------
    Tensor
        0-d float64 tensor.

    Examples
    --------
    >>> float(grad_sumsq([torch.tensor([3.0]), torch.tensor([4.0, 0.0])], implementation="reference"))
    25.0
    """
    if not grads:
        return torch.zeros((), dtype=torch.float64)
    parts: list[Tensor] = []
    for _, fused, rest in _route(grads, lambda i: _fusable(grads[i]), implementation):
        if fused:
            cv = _NO_CLIP if clip_value is None else float(clip_value)
            parts.append(torch.ops.workbench_optim.grad_sumsq([grads[i] for i in fused], cv))
        for i in rest:
            g64 = _clip_grad(grads[i], clip_value, None).to(torch.float64)
            parts.append(g64.square().sum())
    if len(parts) == 1:
        return parts[0]
    first = grads[0].device
    return torch.stack([p.to(first) for p in parts]).sum()


def clip_coefficient(sumsq: Tensor, max_norm: float) -> Tensor:
    """``min(1, max_norm / (sqrt(sumsq) + 1e-6))`` as a 0-d tensor; NaN propagates like torch."""
    return (max_norm / (sumsq.sqrt() + 1e-6)).clamp(max=1.0)


def adam(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    clip_value: float | None = None,
    sumsq: Tensor | None = None,
    max_norm: float | None = None,
    implementation: Implementation = "fused",
) -> None:
    """Adam (``decoupled=False``, L2 decay) or AdamW update of every tensor, in place.

    ``steps[i]`` is tensor ``i``'s step count, a float32 CPU scalar tensor (torch's layout),
    incremented here before use. ``exp_avgs``/``exp_avg_sqs`` are float32 whatever the param
    dtype.
    """
    ref: list[int] = []
    for device, fused, rest in _route(
        params,
        lambda i: _fusable(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i]),
        implementation,
    ):
        ref += rest
        if fused:
            torch.ops.workbench_optim.adam_step(
                [params[i] for i in fused],
                [grads[i] for i in fused],
                [exp_avgs[i] for i in fused],
                [exp_avg_sqs[i] for i in fused],
                [steps[i] for i in fused],
                float(lr),
                float(beta1),
                float(beta2),
                float(eps),
                float(weight_decay),
                bool(decoupled),
                *_clip_args(clip_value, sumsq, max_norm, device),
            )
    coef = None if sumsq is None or max_norm is None else clip_coefficient(sumsq, max_norm)
    for i in ref:
        steps[i].add_(1)
        _adam_reference(
            params[i],
            _clip_grad(grads[i], clip_value, coef),
            exp_avgs[i],
            exp_avg_sqs[i],
            steps[i].item(),
            lr=float(lr),
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            weight_decay=weight_decay,
            decoupled=decoupled,
        )


def adam_multi(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[Tensor],
    group_ends: Sequence[int],
    hyper: Sequence[float],
    *,
    clip_value: float | None,
    max_norm: float | None,
    into: tuple[Sequence[Tensor], Sequence[Tensor], Sequence[Tensor]] | None = None,
) -> Tensor | None:
    """Every param group's Adam/AdamW update and the global clipping norm in one fused call.

    CPU only: one parallel region sums the squares of all gradients, derives the clip
    coefficient and updates every tensor (the ``multi_tensor_apply`` pattern). ``hyper`` holds
    ``(lr, beta1, beta2, eps, weight_decay, decoupled)`` per group and ``group_ends[k]`` is one
    past group k's last tensor. Returns the float64 sum of squares (0 without ``max_norm``), or
    None with nothing changed when the kernels are not loaded or some tensor is not one they
    take; the caller then steps group by group through :func:`adam`, which routes such tensors
    to the reference path. With ``into`` (new params, exp_avgs, exp_avg_sqs: tensors like the
    inputs, sharing no memory with them) the update is out of place: the inputs keep their
    values (the steps still advance).
    """
    if not _fused_ok(torch.device("cpu")):
        return None
    out_p, out_m, out_v = into if into is not None else ([], [], [])
    sumsq = torch.ops.workbench_optim.adam_multi(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        steps,
        list(group_ends),
        [float(h) for h in hyper],
        _NO_CLIP if clip_value is None else float(clip_value),
        -1.0 if max_norm is None else float(max_norm),
        out_p,
        out_m,
        out_v,
    )
    return sumsq if sumsq.numel() == 1 else None


@torch.no_grad()
def _adam_reference(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: float,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> None:
    # Same operations in the same order as torch.optim.adam._single_tensor_adam, in float32.
    p = param if param.dtype == torch.float32 else param.float()
    g = grad.float()
    if weight_decay != 0:
        if decoupled:
            p.mul_(1 - lr * weight_decay)
        else:
            g = g.add(p, alpha=weight_decay)
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    p.addcdiv_(exp_avg, denom, value=-step_size)
    if p is not param:
        param.copy_(p)


def sgd(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    first: bool,
    clip_value: float | None = None,
    sumsq: Tensor | None = None,
    max_norm: float | None = None,
    implementation: Implementation = "fused",
) -> None:
    """SGD update of every tensor, in place.

    ``momentum_buffers`` is empty when ``momentum == 0``; with ``first=True`` the buffers are
    (re)initialised to the effective gradient, as torch does on a parameter's first step.
    """
    bufs = list(momentum_buffers)
    with_buf = momentum != 0
    ref: list[int] = []
    for device, fused, rest in _route(
        params,
        lambda i: _fusable(params[i], grads[i], *([bufs[i]] if with_buf else [])),
        implementation,
    ):
        ref += rest
        if fused:
            torch.ops.workbench_optim.sgd_step(
                [params[i] for i in fused],
                [grads[i] for i in fused],
                [bufs[i] for i in fused] if with_buf else [],
                float(lr),
                float(momentum),
                float(dampening),
                float(weight_decay),
                bool(nesterov),
                bool(first),
                *_clip_args(clip_value, sumsq, max_norm, device),
            )
    coef = None if sumsq is None or max_norm is None else clip_coefficient(sumsq, max_norm)
    for i in ref:
        _sgd_reference(
            params[i],
            _clip_grad(grads[i], clip_value, coef),
            bufs[i] if with_buf else None,
            lr=float(lr),
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            first=first,
        )


@torch.no_grad()
def _sgd_reference(
    param: Tensor,
    grad: Tensor,
    buf: Tensor | None,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    first: bool,
) -> None:
    # Same operations in the same order as torch.optim.sgd._single_tensor_sgd, in float32.
    p = param if param.dtype == torch.float32 else param.float()
    g = grad.float()
    if weight_decay != 0:
        g = g.add(p, alpha=weight_decay)
    if momentum != 0:
        assert buf is not None
        if first:
            buf.copy_(g)
        else:
            buf.mul_(momentum).add_(g, alpha=1 - dampening)
        g = g.add(buf, alpha=momentum) if nesterov else buf
    p.add_(g, alpha=-lr)
    if p is not param:
        param.copy_(p)
