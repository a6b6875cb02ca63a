"""FusedAdamW: AdamW (or classic Adam) with clipping and weight decay folded into one pass.

The boundary: a ``torch.optim.Optimizer`` that keeps torch's state names (``step``,
``exp_avg``, ``exp_avg_sq``) and hands the math to :func:`workbench.optim._functional.adam`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from . import _functional as F
from ._base import FusedOptimizerBase, _dtensor_type, local
from ._functional import Implementation

__all__ = ["FusedAdamW"]


class FusedAdamW(FusedOptimizerBase):
    """AdamW / Adam whose step also clips the gradients, in one pass over memory.

    A drop-in for ``torch.nn.utils.clip_grad_norm_`` (and/or ``clip_grad_value_``) followed by
    ``torch.optim.AdamW`` (``decoupled_weight_decay=True``) or ``torch.optim.Adam`` with L2
    ``weight_decay`` (``decoupled_weight_decay=False``).

    Parameters
    ----------
    params
        Parameters or param groups, as for any ``torch.optim`` optimizer. Groups may override
        ``lr``, ``betas``, ``eps``, ``weight_decay`` and ``decoupled_weight_decay``.
    lr, betas, eps, weight_decay
        As in ``torch.optim.AdamW``.
    decoupled_weight_decay
        ``True``: AdamW (``p *= 1 - lr * weight_decay``). ``False``: Adam with
        ``grad += weight_decay * p``.
    max_grad_norm
        Clip the global L2 norm of all gradients (over all param groups) to this value, with
        ``clip_grad_norm_``'s coefficient ``min(1, max_norm / (norm + 1e-6))``. ``math.inf``
        measures the norm (see :attr:`last_grad_norm`) without clipping. A non-finite norm is
        not an error (as ``error_if_nonfinite=False``): the step proceeds with NaN/zero scale.
    clip_value
        Clamp every gradient element to ``[-clip_value, clip_value]``. With both set, the clamp
        comes first and the norm is that of the clamped gradients, exactly as calling
        ``clip_grad_value_`` and then ``clip_grad_norm_``.
    implementation
        ``"fused"``: C++/CUDA kernels (built on first use; if the build fails a warning is
        issued and the reference path runs). ``"reference"``: pure torch.
    process_group
        Only for plain (non-DTensor) params that differ between ranks (each rank owns a part):
        the clipping norm is then all-reduced over this group. Leave it None under DDP (the
        gradients are already equal everywhere) and under FSDP2 (DTensor params carry their
        mesh, which is used).

    Notes
    -----
    Gradients are only read: the clipped gradient exists only inside the update, so
    ``p.grad`` keeps its unclipped values after ``step()``. Moment buffers are float32 for
    float32, bfloat16 and float16 params; updates are computed in float32 and rounded once.
    Sparse gradients raise ``RuntimeError``. ``max_grad_norm``, ``clip_value`` and
    ``implementation`` apply to all groups at once: they are attributes of the optimizer, not
    param-group options, so ``state_dict()`` does not carry them (see
    :class:`~workbench.optim._base.FusedOptimizerBase`).

    Examples
    --------
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> opt = FusedAdamW([w], lr=0.1, max_grad_norm=1.0, implementation="reference")
    >>> w.grad = torch.full((3,), 10.0)
    >>> opt.step()
    >>> round(opt.last_grad_norm, 3)
    17.321
    >>> sorted(opt.state[w])
    ['exp_avg', 'exp_avg_sq', 'step']
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        decoupled_weight_decay: bool = True,
        *,
        max_grad_norm: float | None = None,
        clip_value: float | None = None,
        implementation: Implementation = "fused",
        process_group: Any = None,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not eps >= 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(
            params,
            defaults,
            max_grad_norm=max_grad_norm,
            clip_value=clip_value,
            implementation=implementation,
            process_group=process_group,
        )
        self._multi_cache: tuple[Any, Any, Any] | None = None

    def _multi_step(self, spares: Mapping[Tensor, tuple[Tensor, ...]] | None = None) -> bool:
        """All groups in one ``adam_multi`` call: the common case of plain CPU tensors that
        all have state (from the second step on). The tensor lists are cached; per step Python
        only gathers the grads and checks that the cached state tensors are still the ones in
        ``self.state`` (an undo or a load may replace them), with no per-tensor torch call.
        With ``spares`` the update goes into them and each tensor then swaps storage with its
        spare (:meth:`step_keeping`).
        """
        if self.implementation != "fused" or self.process_group is not None:
            return False
        lists = self._multi_lists()
        if lists is None:
            return False
        params, exp_avgs, exp_avg_sqs, steps, group_ends = lists
        maybe = [p.grad for p in params]
        grads = [g for g in maybe if g is not None]
        if len(grads) != len(maybe):
            return False
        into: tuple[list[Tensor], list[Tensor], list[Tensor]] | None = None
        if spares is not None:
            kept = [spares.get(p) for p in params]
            if any(k is None or len(k) != 3 for k in kept):
                return False
            into = ([k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept])  # type: ignore[index]
        hyper: list[float] = []
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            hyper += [group["lr"], beta1, beta2, group["eps"], group["weight_decay"]]
            hyper.append(1.0 if group["decoupled_weight_decay"] else 0.0)
        sumsq = F.adam_multi(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            steps,
            group_ends,
            hyper,
            clip_value=self.clip_value,
            max_norm=self.max_grad_norm,
            into=into,
        )
        if sumsq is None:
            return False
        self._last_sumsq = sumsq if self.max_grad_norm is not None else None
        if into is not None:
            # Swap storages, keeping every tensor object (the params the model and autograd
            # hold, the state tensors this optimizer's cache and the spares' owner hold).
            for live, spare in zip(
                [*params, *exp_avgs, *exp_avg_sqs], [*into[0], *into[1], *into[2]], strict=True
            ):
                old = live.data
                live.data = spare.data
                spare.data = old
        return True

    def _multi_lists(
        self,
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor], list[int]] | None:
        """The flat lists ``adam_multi`` takes, or None when some param is not eligible (no
        state yet, a DTensor, not on the CPU)."""
        shape = (len(self.state), tuple(len(g["params"]) for g in self.param_groups))
        cache = getattr(self, "_multi_cache", None)  # absent after unpickling
        if cache is not None and cache[0] is self.state and cache[1] == shape:
            lists = cache[2]
            state = self.state
            empty: dict[str, Tensor] = {}
            if all(
                state.get(p, empty).get("exp_avg") is m and state[p].get("exp_avg_sq") is v
                for p, m, v in zip(lists[0], lists[1], lists[2], strict=True)
            ):
                return lists
        self._multi_cache = None
        dtensor = _dtensor_type()
        params: list[Tensor] = []
        group_ends: list[int] = []
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state or p.device.type != "cpu" or (dtensor and isinstance(p, dtensor)):
                    return None
                params.append(p)
            group_ends.append(len(params))
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        steps = [self.state[p]["step"] for p in params]
        lists = (params, exp_avgs, exp_avg_sqs, steps, group_ends)
        self._multi_cache = (self.state, shape, lists)
        return lists

    def _step_group(
        self, group: dict[str, Any], pairs: list[tuple[Tensor, Tensor]], sumsq: Tensor | None
    ) -> None:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p, g in pairs:
            state = self.state[p]
            if len(state) == 0:
                # torch's names and layout, so state_dicts interoperate with torch.optim.AdamW;
                # the moments are float32 whatever the param dtype.
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(
                    p, dtype=torch.float32, memory_format=torch.preserve_format
                )
                state["exp_avg_sq"] = torch.zeros_like(
                    p, dtype=torch.float32, memory_format=torch.preserve_format
                )
            p_local = local(p)
            if p_local.numel() == 0:
                # An empty shard (FSDP2 with fewer rows than ranks): nothing to update, but its
                # step advances so the state agrees on every rank.
                state["step"].add_(1)
                continue
            params.append(p_local)
            grads.append(local(g))
            exp_avgs.append(local(state["exp_avg"]))
            exp_avg_sqs.append(local(state["exp_avg_sq"]))
            steps.append(state["step"])
        if not params:
            return
        beta1, beta2 = group["betas"]
        F.adam(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            steps,
            lr=float(group["lr"]),
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled=group["decoupled_weight_decay"],
            clip_value=self.clip_value,
            sumsq=sumsq,
            max_norm=self.max_grad_norm,
            implementation=self.implementation,
        )
