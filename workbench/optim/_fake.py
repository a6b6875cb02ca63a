"""Fake (meta) implementations of the ``workbench_optim`` ops, for tracing without data.

The boundary: shapes and dtypes only. torch needs them wherever an op runs on tensors that
hold no data: ``FakeTensorMode``, ``torch.compile``, the meta device, and DTensor's sharding
propagation (which fails with "attempted to run this operator with Meta tensors, but there was
no fake impl" without them). The optimizers themselves never dispatch a DTensor into the ops:
they step on local shards (see :mod:`workbench.optim._base`).
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

__all__ = ["register_fake_impls"]

_LOCK = threading.Lock()
_DONE = False


def _grad_sumsq_fake(grads: list[Tensor], clip_value: float) -> Tensor:
    # A 0-d float64 tensor on the first gradient's device (CPU for an empty list), as the kernels.
    device = grads[0].device if grads else torch.device("cpu")
    return torch.empty((), dtype=torch.float64, device=device)


def _adam_step_fake(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    clip_value: float,
    grad_sumsq: Tensor | None,
    max_norm: float,
) -> None:
    return None


def _sgd_step_fake(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    first: bool,
    clip_value: float,
    grad_sumsq: Tensor | None,
    max_norm: float,
) -> None:
    return None


def _adam_multi_fake(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    group_ends: list[int],
    hyper: list[float],
    clip_value: float,
    max_norm: float,
) -> Tensor:
    return torch.empty((), dtype=torch.float64)


def _stream_probe_fake(
    params: list[Tensor], grads: list[Tensor], a: list[Tensor], b: list[Tensor]
) -> None:
    return None


def register_fake_impls() -> None:
    """Register the fake impls once, after the library defining the ops has loaded."""
    global _DONE
    with _LOCK:
        if _DONE:
            return
        for name, fn in (
            ("grad_sumsq", _grad_sumsq_fake),
            ("adam_step", _adam_step_fake),
            ("sgd_step", _sgd_step_fake),
            ("adam_multi", _adam_multi_fake),
            ("stream_probe", _stream_probe_fake),
        ):
            torch.library.register_fake(f"workbench_optim::{name}", fn)
        _DONE = True
