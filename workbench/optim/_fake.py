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


def _in_place_fake(*args: object, **kwargs: object) -> None:
    # adam_step, sgd_step and stream_probe update their tensors in place and return nothing:
    # whatever the arguments, there is no output whose shape the fake must give.
    return None


def _adam_multi_fake(*args: object, **kwargs: object) -> Tensor:
    # The float64 sum of squares, on the CPU: adam_multi runs there only.
    return torch.empty((), dtype=torch.float64)


def register_fake_impls() -> None:
    """Register the fake impls once, after the library defining the ops has loaded."""
    global _DONE
    with _LOCK:
        if _DONE:
            return
        for name, fn in (
            ("grad_sumsq", _grad_sumsq_fake),
            ("adam_step", _in_place_fake),
            ("sgd_step", _in_place_fake),
            ("adam_multi", _adam_multi_fake),
            ("stream_probe", _in_place_fake),
        ):
            torch.library.register_fake(f"workbench_optim::{name}", fn)
        _DONE = True
