"""What FusedAdamW and FusedSGD share: argument checks, global clipping, state_dict policy.

The boundary: subclasses gather their per-group tensor lists and call the functional entry in
:mod:`workbench.optim._functional`; this class owns everything that spans param groups (the
global gradient norm) and the torch.optim contracts (``step(closure)``, ``state_dict``).

Sharded params (FSDP2's DTensors) are stepped on their local shards: the kernels never see a
DTensor, state stays DTensor (so ``torch.distributed.checkpoint`` reshards it), empty shards
only advance ``step``, and the clipping norm is the global one, reduced over the mesh once per
step (see :meth:`FusedOptimizerBase._global_sumsq`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _functional as F
from ._functional import Implementation

__all__ = ["FusedOptimizerBase"]

_FP32_STATE_KEYS = ("exp_avg", "exp_avg_sq", "momentum_buffer")


def _dtensor_type() -> type | None:
    """``DTensor`` where torch.distributed exists, else None (imported on first use)."""
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def local(t: Tensor) -> Tensor:
    """The shard this process holds of a DTensor (a view: in-place updates land in it), or ``t``."""
    dt = _dtensor_type()
    return cast(Any, t).to_local() if dt is not None and isinstance(t, dt) else t


def _shard_key(g: Tensor) -> tuple[Any, tuple[int, ...]] | None:
    """Mesh and mesh dims over which ``g``'s local parts must be summed (None: a plain tensor)."""
    dt = _dtensor_type()
    if dt is None or not isinstance(g, dt):
        return None
    placements = cast(Any, g).placements
    dims = tuple(i for i, pl in enumerate(placements) if pl.is_shard() or pl.is_partial())
    return cast(Any, g).device_mesh, dims


class FusedOptimizerBase(Optimizer):
    """Base of the fused optimizers; not meant to be used directly.

    Notes
    -----
    A deliberate deviation from torch.optim, which keeps options such as ``fused`` and
    ``foreach`` in ``defaults`` (hence in every param group and in ``state_dict()``):
    ``max_grad_norm``, ``clip_value`` and ``implementation`` are attributes of the optimizer
    instance, not param-group defaults. Clipping is global: one norm over the gradients of all
    groups, so a per-group value would have no meaning, and ``implementation`` is one choice for
    the whole step. As a consequence they are not in ``state_dict()``; pass them to the
    constructor again when resuming (``load_state_dict`` neither needs nor restores them), and
    a state dict saved by ``torch.optim.AdamW`` loads unchanged.
    """

    def __init__(
        self,
        params: Iterable[Any],
        defaults: dict[str, Any],
        *,
        max_grad_norm: float | None,
        clip_value: float | None,
        implementation: Implementation,
        process_group: Any = None,
    ) -> None:
        if max_grad_norm is not None and not max_grad_norm >= 0.0:
            raise ValueError(f"Invalid max_grad_norm: {max_grad_norm} (must be >= 0 or None)")
        if clip_value is not None and not clip_value > 0.0:
            raise ValueError(f"Invalid clip_value: {clip_value} (must be > 0 or None)")
        if implementation not in ("fused", "reference"):
            raise ValueError(
                f"Invalid implementation: {implementation!r} (choose 'fused' or 'reference')"
            )
        super().__init__(params, defaults)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.clip_value = None if clip_value is None else float(clip_value)
        self.implementation: Implementation = implementation
        self.process_group = process_group
        self._last_sumsq: Tensor | None = None

    @property
    def last_grad_norm(self) -> float | None:
        """Global L2 norm of the gradients (after ``clip_value``) seen by the last step.

        Computed only when ``max_grad_norm`` is set (use ``math.inf`` to measure without
        clipping); reading it synchronizes with the device, the step itself does not. Under
        sharding (DTensor params, or ``process_group``) it is the norm over all ranks, the same
        value on every rank.
        """
        if self._last_sumsq is None:
            return None
        return math.sqrt(float(self._last_sumsq))

    def _grads_with_params(self) -> list[list[tuple[Tensor, Tensor]]]:
        """Per group, the (param, grad) pairs that take part in this step."""
        out: list[list[tuple[Tensor, Tensor]]] = []
        for group in self.param_groups:
            pairs: list[tuple[Tensor, Tensor]] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients; use "
                        "torch.optim.SparseAdam or a dense embedding (sparse=False)"
                    )
                pairs.append((p, p.grad))
            out.append(pairs)
        return out

    def _global_sumsq(self, groups: list[list[tuple[Tensor, Tensor]]]) -> Tensor | None:
        """Sum of squares of all gradients, over every rank that holds a part of them.

        Plain gradients count as they are (DDP has already made them equal on every rank),
        unless ``process_group`` is set: then each rank holds different ones and their sum is
        all-reduced over it. A DTensor gradient contributes its local shard, and the sums are
        all-reduced over the mesh dims it is sharded on: one all-reduce per step for FSDP2.
        Every rank takes part in the same reductions in the same order (params are listed in
        the same order everywhere), even one whose shards are all empty.
        """
        if self.max_grad_norm is None:
            self._last_sumsq = None
            return None
        buckets: dict[Any, tuple[list[Tensor], torch.device]] = {}
        for pairs in groups:
            for _, g in pairs:
                key = _shard_key(g)
                g_local = local(g)
                if key not in buckets:
                    buckets[key] = ([], g_local.device)
                if g_local.numel():
                    buckets[key][0].append(g_local)
        total: Tensor | None = None
        for key, (grads, device) in buckets.items():
            if grads:
                part = F.grad_sumsq(grads, self.clip_value, self.implementation)
            else:
                part = torch.zeros((), dtype=torch.float64, device=device)
            if key is not None:
                mesh, dims = key
                for d in dims:
                    torch.distributed.all_reduce(part, group=mesh.get_group(d))
            elif self.process_group is not None:
                torch.distributed.all_reduce(part, group=self.process_group)
            total = part if total is None else total + part.to(total.device)
        if total is None:
            total = torch.zeros((), dtype=torch.float64)
        self._last_sumsq = total
        return total

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step over all param groups.

        Parameters
        ----------
        closure
            Re-evaluates the model and returns the loss (as in ``torch.optim``).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stepped = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not self._multi_step():
            groups = self._grads_with_params()
            sumsq = self._global_sumsq(groups)
            for group, pairs in zip(self.param_groups, groups, strict=True):
                if pairs:
                    self._step_group(group, pairs, sumsq)
        self._bump(stepped)
        return loss

    @torch.no_grad()
    def step_keeping(self, spares: Mapping[Tensor, tuple[Tensor, ...]]) -> bool:
        """One step that keeps the values from before it, without copying them.

        ``spares`` maps each param to spare tensors shaped like it and its moments (for
        FusedAdamW: param, ``exp_avg``, ``exp_avg_sq``). When the step can take the one-call
        path and every param has spares, the update is written into the spares, and then each
        param and moment swaps storage with its spare: the optimizer holds the new values, the
        spares the old ones (the ``step`` counters advance as usual). Returns True then. Else
        it returns False having changed nothing: copy what must be kept, then call ``step()``.
        """
        if not self._multi_step(spares):
            return False
        self._bump([p for g in self.param_groups for p in g["params"]])
        return True

    def _bump(self, stepped: list[Tensor]) -> None:
        # The kernels write through data pointers, which torch does not see: bump the version
        # counters, as an in-place torch op would, so ``Tensor._version`` tells a stepped
        # tensor (caches keyed on it: an edit's key statistics, the undo point's copies).
        state = [
            t for p in stepped for t in self.state.get(p, {}).values() if isinstance(t, Tensor)
        ]
        torch.autograd.graph.increment_version([*stepped, *state])

    def _multi_step(self, spares: Mapping[Tensor, tuple[Tensor, ...]] | None = None) -> bool:
        """Step every group (and clip) in one fused call if possible; whether it did. With
        ``spares``, out of place into them and swapped (see :meth:`step_keeping`).

        The base class has no such path; :class:`~workbench.optim.FusedAdamW` does on the CPU.
        """
        return False

    def _step_group(
        self, group: dict[str, Any], pairs: list[tuple[Tensor, Tensor]], sumsq: Tensor | None
    ) -> None:
        raise NotImplementedError

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict (ours or torch.optim's: the key names are the same).

        torch casts loaded state to the param dtype; the fused optimizers keep moment buffers
        in float32, so they are taken from ``state_dict`` again at full precision, and ``step``
        is kept as a float32 CPU tensor.
        """
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        saved_state = state_dict["state"]
        for saved_id, p in zip(saved_ids, params, strict=True):
            if saved_id not in saved_state or p not in self.state:
                continue
            state = self.state[p]
            for key in _FP32_STATE_KEYS:
                value = saved_state[saved_id].get(key)
                if isinstance(value, Tensor):
                    state[key] = value.detach().to(device=p.device, dtype=torch.float32).clone()
                    state[key] = state[key].contiguous()
            if "step" in state:
                state["step"] = torch.tensor(float(cast(Any, state["step"])), dtype=torch.float32)
