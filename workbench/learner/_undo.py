"""Undo of learning: the training state from before the newest update, kept to the bit.

An ``UndoPoint`` holds copies of every parameter and buffer, every optimizer state tensor, and
the small learner state that decides what later updates do (counters, RNG states, buffers).
Its tensors are allocated once and refilled before each update, so keeping it costs one copy of
the weights and optimizer state in memory and a copy per update, no allocation. The base point
(the weights as loaded) is kept the same way, without optimizer state.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["UndoPoint", "WeightCopy"]


def _tensors(model: torch.nn.Module) -> Iterator[Tensor]:
    yield from model.parameters()
    yield from model.buffers()


class WeightCopy:
    """A reusable copy of a model's parameters and buffers."""

    def __init__(self) -> None:
        self._saved: list[Tensor] = []

    @torch.no_grad()
    def save(self, model: torch.nn.Module) -> None:
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


@dataclass
class UndoPoint:
    """Everything an update changes, as it was before the update."""

    weights: WeightCopy = field(default_factory=WeightCopy)
    optimizer: dict[int, dict[str, Tensor]] = field(default_factory=dict)  # param index -> state
    learner: dict[str, Any] = field(default_factory=dict)  # plain values, deep-copied
    valid: bool = False  # False until saved, and again once used

    @torch.no_grad()
    def save(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, learner: dict[str, Any]
    ) -> None:
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
        self.learner = copy.deepcopy(learner)
        self.valid = True

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
