"""Published weights: inference reads an immutable snapshot while the worker trains.

The worker copies its weights into a spare snapshot nobody is reading, then swaps one
reference under a lock. A reader holds its snapshot for a whole call, so it never sees a
half-updated model, and it never waits for a training step: acquiring is a reference swap.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from workbench.models import Transformer
from workbench.tokenizers import Tokenizer

__all__ = ["Publisher", "Snapshot"]


@dataclass(eq=False)
class Snapshot:
    model: Transformer
    tokenizer: Tokenizer
    version: int
    readers: int = field(default=0)


def _frozen_copy(model: Transformer) -> Transformer:
    clone = copy.deepcopy(model).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


class Publisher:
    """Hands out the current snapshot; recycles snapshots once their readers are gone."""

    def __init__(
        self, model: Transformer, tokenizer: Tokenizer, version: int = 0, spares: int = 2
    ) -> None:
        self._lock = threading.Lock()
        self._unread = threading.Condition(self._lock)
        self._active = 0  # readers inside reading(), over all snapshots
        self._current = Snapshot(_frozen_copy(model), tokenizer, version)
        self._pool: list[Snapshot] = []  # retired snapshots, reusable once unread
        self._spares = spares

    @property
    def version(self) -> int:
        return self._current.version

    @contextmanager
    def reading(self) -> Iterator[Snapshot]:
        """Hold the current snapshot for the duration of a read."""
        with self._lock:
            snap = self._current
            snap.readers += 1
            self._active += 1
        try:
            yield snap
        finally:
            with self._lock:
                snap.readers -= 1
                self._active -= 1
                if self._active == 0:
                    self._unread.notify_all()

    def yield_to_readers(self, max_wait: float) -> float:
        """Wait (at most ``max_wait`` seconds) while any reader is active; return the wait.

        The worker calls this between layers: inference gets the CPU and the GIL first, and
        training still progresses when reads never stop (the caller bounds the total).
        """
        if self._active == 0:
            return 0.0
        start = time.perf_counter()
        with self._lock:
            self._unread.wait_for(lambda: self._active == 0, timeout=max_wait)
        return time.perf_counter() - start

    @torch.no_grad()
    def publish(self, model: Transformer, version: int, tokenizer: Tokenizer) -> None:
        """Make ``model``'s current weights the ones inference sees (called by the worker)."""
        with self._lock:
            spare = next((s for s in self._pool if s.readers == 0), None)
            if spare is not None:
                self._pool.remove(spare)
        if spare is not None and _same_layout(spare.model, model):
            for dst, src in zip(_tensors(spare.model), _tensors(model), strict=True):
                dst.copy_(src)
            spare.version = version
            spare.tokenizer = tokenizer
            fresh = spare
        else:
            fresh = Snapshot(_frozen_copy(model), tokenizer, version)
        with self._lock:
            old, self._current = self._current, fresh
            self._pool.append(old)
            # Keep a few spares; snapshots still being read are dropped from the pool and
            # freed by the garbage collector when their reader lets go.
            idle = [s for s in self._pool if s.readers == 0]
            if len(idle) > self._spares:
                for s in idle[: len(idle) - self._spares]:
                    self._pool.remove(s)


def _tensors(model: Transformer) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _same_layout(a: Transformer, b: Transformer) -> bool:
    if a.cfg != b.cfg:
        return False
    ta, tb = _tensors(a), _tensors(b)
    return len(ta) == len(tb) and all(
        x.shape == y.shape and x.dtype == y.dtype and x.device == y.device
        for x, y in zip(ta, tb, strict=True)
    )
