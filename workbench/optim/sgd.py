"""FusedSGD: SGD with momentum, clipping and weight decay folded into one pass.

The boundary: a ``torch.optim.Optimizer`` that keeps torch's state name (``momentum_buffer``)
and hands the math to :func:`workbench.optim._functional.sgd`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from . import _functional as F
from ._base import FusedOptimizerBase, local
from ._functional import Implementation

__all__ = ["FusedSGD"]


class FusedSGD(FusedOptimizerBase):
    """SGD (momentum, dampening, Nesterov, L2 weight decay) whose step also clips gradients.

    A drop-in for ``clip_grad_norm_`` / ``clip_grad_value_`` followed by ``torch.optim.SGD``.

    Parameters
    ----------
    params
        Parameters or param groups; groups may override every hyperparameter below except
        the clipping ones, which are global.
    lr, momentum, dampening, weight_decay, nesterov
        As in ``torch.optim.SGD``.
    max_grad_norm, clip_value, implementation, process_group
        As in :class:`workbench.optim.FusedAdamW`.

    Notes
    -----
    Gradients are only read, never clipped in place. The momentum buffer is float32 for every
    param dtype and, as in torch, starts as the (clipped, decayed) gradient of the first step.

    Examples
    --------
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> opt = FusedSGD([w], lr=0.5, clip_value=1.0, implementation="reference")
    >>> w.grad = torch.tensor([4.0, -0.5])
    >>> opt.step()
    >>> w.detach().tolist()
    [-0.5, 0.25]
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        max_grad_norm: float | None = None,
        clip_value: float | None = None,
        implementation: Implementation = "fused",
        process_group: Any = None,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
        )
        super().__init__(
            params,
            defaults,
            max_grad_norm=max_grad_norm,
            clip_value=clip_value,
            implementation=implementation,
            process_group=process_group,
        )

    def _step_group(
        self, group: dict[str, Any], pairs: list[tuple[Tensor, Tensor]], sumsq: Tensor | None
    ) -> None:
        momentum = group["momentum"]
        hyper = dict(
            lr=float(group["lr"]),
            momentum=momentum,
            dampening=group["dampening"],
            weight_decay=group["weight_decay"],
            nesterov=group["nesterov"],
            clip_value=self.clip_value,
            sumsq=sumsq,
            max_norm=self.max_grad_norm,
            implementation=self.implementation,
        )
        if momentum == 0:
            # Local shards (FSDP2) and no empty ones: the kernels never see a DTensor.
            loc = [(local(p), local(g)) for p, g in pairs]
            loc = [(p, g) for p, g in loc if p.numel()]
            if loc:
                F.sgd([p for p, _ in loc], [g for _, g in loc], [], first=False, **hyper)
            return
        # Params whose buffer exists and those whose buffer is created by this step go through
        # separate calls, so the kernel needs no per-tensor flag.
        for first in (False, True):
            sel = [(p, g) for p, g in pairs if ("momentum_buffer" not in self.state[p]) == first]
            if not sel:
                continue
            if first:
                for p, _ in sel:
                    self.state[p]["momentum_buffer"] = torch.empty_like(
                        p, dtype=torch.float32, memory_format=torch.preserve_format
                    )
            trip = [(local(p), local(g), local(self.state[p]["momentum_buffer"])) for p, g in sel]
            trip = [t for t in trip if t[0].numel()]
            if trip:
                F.sgd(
                    [p for p, _, _ in trip],
                    [g for _, g, _ in trip],
                    [b for _, _, b in trip],
                    first=first,
                    **hyper,
                )
