"""Fused optimizers: AdamW/Adam and SGD with gradient clipping folded into the step.

``FusedAdamW`` and ``FusedSGD`` are ``torch.optim.Optimizer`` subclasses whose update rules
live once in ``csrc/optim_math.h``, run by a C++/OpenMP driver on CPU and a multi-tensor
CUDA driver on GPU (built just in time and cached), with a pure-torch reference path beside
them. :func:`backend_info` says which path is active and why.
"""

from __future__ import annotations

from ._build import backend_info, kernel_sources_dir
from ._functional import clip_coefficient, grad_sumsq
from .adamw import FusedAdamW
from .sgd import FusedSGD

__all__ = [
    "FusedAdamW",
    "FusedSGD",
    "backend_info",
    "clip_coefficient",
    "grad_sumsq",
    "kernel_sources_dir",
]
