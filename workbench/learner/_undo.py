"""Undo of learning: the training state from before the newest update, kept to the bit.

An ``UndoPoint`` holds copies of every parameter and buffer, every optimizer state tensor, and
the small learner state that decides what later updates do (counters, RNG states, buffers).
Its tensors are allocated once and refilled before each update, so keeping it costs one copy of
the weights and optimizer state in memory and a copy per update, no allocation. The base point
(the weights as loaded) is kept the same way, without optimizer state. ``TrainerRollback``
puts back what a refused load changed.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from workbench.learner._training import Trainer

__all__ = ["TrainerRollback", "UndoPoint", "WeightCopy", "stamp"]


def _tensors(model: torch.nn.Module) -> Iterator[Tensor]:
    yield from model.parameters()
    yield from model.buffers()


class WeightCopy:
    """A reusable copy of a model's parameters and buffers."""

    def __init__(self) -> None:
        self._saved: list[Tensor] = []
        self._memory: Any = None  # the model's edit memory (immutable: kept by reference)

    def keep_memory(self, model: torch.nn.Module) -> None:
        self._memory = getattr(model, "edit_memory", None)

    @torch.no_grad()
    def save(self, model: torch.nn.Module) -> None:
        self.keep_memory(model)
        live = list(_tensors(model))
        same = len(live) == len(self._saved) and all(
            a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
            for a, b in zip(live, self._saved, strict=True)
        )
        if not same:
            self._saved = [t.detach().clone() for t in live]
            return
        for dst, src in zip(self._saved, live, strict=True):
            dst.copy_(src)

    @torch.no_grad()
    def restore(self, model: torch.nn.Module) -> None:
        live = list(_tensors(model))
        if len(live) != len(self._saved):
            raise RuntimeError("the model changed shape since its weights were saved")
        for dst, src in zip(live, self._saved, strict=True):
            dst.copy_(src)
        if hasattr(model, "edit_memory"):
            model.edit_memory = self._memory


class _Unknown:
    """The stamp of tensors whose writes cannot be told (no version counter): equal to none."""

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = object.__hash__


def stamp(model: torch.nn.Module, *more: Tensor) -> tuple[Any, ...]:
    """What identifies the contents of ``model``'s parameters and buffers (and ``more``): the
    model (a weak reference: a new one never matches), each tensor's identity, storage and
    version counter (bumped by every in-place write, our fused optimizers' too). Equal stamps:
    no tensor was written in between."""
    live = [*_tensors(model), *more]
    if any(t.is_inference() for t in live):  # no version counter: never taken as unchanged
        return (_Unknown(),)
    return (weakref.ref(model), *((id(t), t.data_ptr(), t._version) for t in live))


def _stamp(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, ...]:
    """``stamp`` of the model and the optimizer's state (the object, its dict, its tensors)."""
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, Tensor)]
    return (weakref.ref(optimizer), id(optimizer.state), *stamp(model, *state))


@dataclass
class UndoPoint:
    """Everything an update changes, as it was before the update. A ``save`` copies no tensor
    when none changed since its last copy: an edit kept in the edit memory changes none, so
    the next update's undo point costs nothing (SmolLM2: 0.54 GB of weights, 0.2-0.3 s).

    The copy is deferred to the update's first write: the optimizer step (:meth:`step`) or,
    for an edit, :meth:`ensure`. A fused optimizer that can step out of place writes the new
    values into this point's copies and swaps them with the live tensors, so the point holds
    the old values without any copy (SmolLM2: 0.14 s of a 0.78 s update saved); the worker
    calls :meth:`settle` after the update, which copies if nothing wrote."""

    weights: WeightCopy = field(default_factory=WeightCopy)
    optimizer: dict[int, dict[str, Tensor]] = field(default_factory=dict)  # param index -> state
    learner: dict[str, Any] = field(default_factory=dict)  # plain values, deep-copied
    valid: bool = False  # False until saved, and again once used
    _copied: tuple[Any, ...] = ()  # the stamp of the tensors the copies hold
    _due: tuple[Any, ...] | None = None  # (model, optimizer, stamp, cores) of a deferred copy

    def save(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        learner: dict[str, Any],
        cores: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        """Keep the state from before an update; a copy, when one is needed, is deferred to
        the update's first write and runs inside ``cores()`` (the worker's: the free cores)."""
        now = _stamp(model, optimizer)
        self._due = (model, optimizer, now, cores) if self._copied != now else None
        self.weights.keep_memory(model)
        self.learner = copy.deepcopy(learner)
        self.valid = True

    def ensure(self) -> None:
        """Take the deferred copy now, before anything writes (an edit calls this)."""
        if self._due is None:
            return
        model, optimizer, now, cores = self._due
        self._due = None
        with cores():
            self._copy(model, optimizer)
        self._copied = now  # (copying reads the tensors: their stamp stands)

    @torch.no_grad()
    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``, keeping what it changes in this point: by swapping storage
        with the copies when the optimizer can step out of place, else by copying first."""
        due = self._due
        spares = None if due is None or due[1] is not optimizer else self._spares(*due[:2])
        if spares is None or due is None:
            self.ensure()
            optimizer.step()
            return
        model, _, now, _ = due
        params = list(model.parameters())
        for i, p in enumerate(params):  # the counters advance in the step: copied before it
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, Tensor):
                self.optimizer[i]["step"].copy_(step)
        if not optimizer.step_keeping(spares):  # type: ignore[attr-defined]
            self.ensure()  # it changed nothing: copy, then the in-place step
            optimizer.step()
            return
        self._due = None
        # What the step did not swap is as it was before the step: copied now (buffers, params
        # outside the optimizer, their state), so this point matches the live state it left.
        swapped = {id(p) for p in spares}
        live = list(_tensors(model))
        for kept, t in zip(self.weights._saved, live, strict=True):
            if id(t) not in swapped:
                kept.copy_(t)
        for i, p in enumerate(params):
            for key, value in optimizer.state.get(p, {}).items():
                if key == "step" or (id(p) in swapped and key in ("exp_avg", "exp_avg_sq")):
                    continue
                if isinstance(value, Tensor):
                    self.optimizer[i][key].copy_(value)
        self._copied = now

    def _spares(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> dict[Tensor, tuple[Tensor, Tensor, Tensor]] | None:
        """Per param, this point's copies of it and its moments to step into; None unless
        earlier copies of the same shapes exist for every tensor and state entry."""
        if not hasattr(optimizer, "step_keeping"):
            return None
        live = list(_tensors(model))
        saved = self.weights._saved
        if len(saved) != len(live) or any(
            a.shape != b.shape or a.dtype != b.dtype or a.device != b.device
            for a, b in zip(saved, live, strict=True)
        ):
            return None
        spares: dict[Tensor, tuple[Tensor, Tensor, Tensor]] = {}
        for i, p in enumerate(model.parameters()):
            state = optimizer.state.get(p)
            if not state:
                continue
            kept = self.optimizer.get(i)
            if kept is None or set(kept) != set(state):
                return None
            for key, value in state.items():
                if not isinstance(value, Tensor) or kept[key].shape != value.shape:
                    return None
            if "exp_avg" in state and "exp_avg_sq" in state:
                spares[p] = (saved[i], kept["exp_avg"], kept["exp_avg_sq"])
        return spares

    def settle(self, ok: bool) -> None:
        """After the update: a copy still deferred means nothing wrote, so it is taken now;
        a failed update (``ok=False``) leaves no undo point."""
        if not ok:
            self._due = None
            self.valid = False
            return
        if self._due is None:
            return
        model, optimizer, before = self._due[:3]
        knowable = not any(isinstance(x, _Unknown) for x in before)
        if knowable and _stamp(model, optimizer) != before:
            # Something wrote without asking this point first: its copies are not the
            # update's start, so there is nothing to undo to (a bug, said plainly).
            self._due = None
            self.valid = False
            raise RuntimeError("the update wrote the weights before the undo point kept them")
        self.ensure()

    @torch.no_grad()
    def _copy(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._copied = ()  # (a failed copy leaves no stamp)
        self.weights.save(model)
        params = list(model.parameters())
        kept: dict[int, dict[str, Tensor]] = {}
        for i, p in enumerate(params):
            state = optimizer.state.get(p)
            if not state:
                continue
            old = self.optimizer.get(i, {})
            slot: dict[str, Tensor] = {}
            for key, value in state.items():
                prev = old.get(key)
                if prev is not None and prev.shape == value.shape and prev.dtype == value.dtype:
                    prev.copy_(value)
                    slot[key] = prev
                else:
                    slot[key] = value.detach().clone()
            kept[i] = slot
        self.optimizer = kept

    @torch.no_grad()
    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Put the weights and optimizer state back; returns the saved learner state."""
        self.weights.restore(model)
        params = list(model.parameters())
        for i, p in enumerate(params):
            saved = self.optimizer.get(i)
            if saved is None:
                optimizer.state.pop(p, None)  # the update created this state: drop it
                continue
            state = optimizer.state[p]
            for key, value in saved.items():
                if key in state and state[key].shape == value.shape:
                    state[key].copy_(value)
                else:
                    state[key] = value.clone()
        self.valid = False
        return self.learner


class TrainerRollback:
    """What ``Trainer.load`` may change, kept so a failed load can put it back bit for bit.

    A load of the same architecture writes the weights in place (hence the copy); another
    architecture replaces model and optimizer (the old objects are kept untouched); a custom
    checkpoint replaces the optimizer state (``load_state_dict`` swaps in a new ``state``, so
    the references from ``state_dict`` still hold the old values).
    """

    def __init__(self, trainer: Trainer) -> None:
        self.model = trainer.model
        self.pretrained = trainer.model.pretrained
        self.weights = WeightCopy()
        self.weights.save(trainer.model)
        self.tokenizer = trainer.tokenizer
        self.metadata = trainer.metadata
        self.optimizer = trainer.optimizer
        self.optimizer_name = trainer.optimizer_name
        self.optimizer_state = trainer.optimizer.state_dict()
        self.optimizer_state_of = trainer.optimizer.state  # replaced, not mutated, by a load

    def restore(self, trainer: Trainer) -> None:
        if trainer.model is self.model:
            self.weights.restore(self.model)
        else:
            trainer.model = self.model
        self.model.pretrained = self.pretrained
        trainer.metadata = self.metadata
        if trainer.optimizer is self.optimizer:
            if self.optimizer.state is not self.optimizer_state_of:
                self.optimizer.load_state_dict(self.optimizer_state)
        else:
            trainer.optimizer, trainer.optimizer_name = self.optimizer, self.optimizer_name
        trainer.tokenizer = self.tokenizer
