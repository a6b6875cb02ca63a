"""Published weights: inference reads an immutable snapshot while the worker trains.

The worker copies its weights into a spare snapshot nobody is reading, then swaps one
reference under a lock. A reader holds its snapshot for a whole call, so it never sees a
half-updated model, and it never waits for a training step: acquiring is a reference swap.

With ``inference="fast"`` each snapshot also carries a ``FastTransformer`` (int8 weights, see
``workbench.models.fast``) that generation reads instead of the float32 copy. The worker
re-quantizes it before the swap (only the matrices whose bytes changed: an edit moves one), so
the fast copy always holds the published version's weights and building it never blocks a
reader (readers keep the previous snapshot meanwhile). Models the fast copy does not implement
decode on the reference path; ``inference_path`` says which runs.

The float32 model stays in every snapshot, fast or not: ``learner.model`` hands it out,
``score`` computes losses and perplexities on it, labeling scores labels on it (a prompt's
one pass is faster there than on the int8 copy) and ``describe`` reads its size and dtype.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from workbench._openmp import free_cores, release_thread_team
from workbench.learner._undo import stamp
from workbench.models import Transformer
from workbench.models.fast import FastTransformer, backend, unsupported
from workbench.tokenizers import Tokenizer

__all__ = ["INFERENCE_PATHS", "Publisher", "Snapshot"]

# per thread: in a paced read, the intra-op thread count the reader may use (see ``pace``)
_PACED = threading.local()

HEAVY_READ_S = 0.005  # a read held this long is inference (one SmolLM2 token: ~6 ms)

INFERENCE_PATHS = ("fast", "reference")


@dataclass(eq=False)
class Snapshot:
    model: Transformer
    tokenizer: Tokenizer
    version: int
    readers: int = field(default=0)
    fast: FastTransformer | None = None  # the int8 decoding copy of ``model``, when enabled
    refresh_s: float = 0.0  # seconds the fast copy took to build or refresh
    source: tuple[Any, ...] = ()  # ``stamp`` of the weights ``model`` copied, when copied

    @property
    def decoder(self) -> Transformer | FastTransformer:
        """What generation runs on: the fast copy when there is one, else the fp32 model."""
        return self.model if self.fast is None else self.fast


def fast_unavailable(model: Transformer) -> str | None:
    """Why ``model`` cannot get a fast copy (None: it can)."""
    if model.device.type != "cpu":
        return f"the fast copy is a CPU path; the model is on {model.device}"
    return unsupported(model.cfg)


def _frozen_copy(model: Transformer, pace: Callable[[], None]) -> Transformer:
    """A read-only copy of ``model`` whose blocks call ``pace`` before they run."""
    clone = copy.deepcopy(model).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    for block in clone.blocks:
        block.register_forward_pre_hook(lambda module, args: pace())
    return clone


class Publisher:
    """Hands out the current snapshot; recycles snapshots once their readers are gone."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        version: int = 0,
        spares: int = 2,
        inference: str = "reference",
    ) -> None:
        if inference not in INFERENCE_PATHS:
            raise ValueError(f"inference must be 'fast' or 'reference', got {inference!r}")
        self._lock = threading.Lock()
        self._unread = threading.Condition(self._lock)
        self._active = 0  # readers inside reading(), over all snapshots
        self._last_read = -math.inf  # perf_counter() when the last inference ended
        self.recent_s = 0.01  # how long after an inference readers_recent() still says yes
        # whether the worker is doing something (an update, a command): readers then decode
        # on one intra-op thread and leave it the others; while it waits, on all of theirs
        self.busy = True  # until the worker first waits
        self.inference = inference  # asked for; ``inference_path`` says what runs
        self._current = Snapshot(
            _frozen_copy(model, self.pace), tokenizer, version, source=stamp(model)
        )
        self._build_fast(self._current, model)
        self._pool: list[Snapshot] = []  # retired snapshots, reusable once unread
        self._spares = spares

    def inference_path(self, snap: Snapshot | None = None) -> tuple[str, str]:
        """``("fast" | "reference", why)`` of ``snap`` (default: the current snapshot)."""
        snap = self._current if snap is None else snap
        if snap.fast is not None:
            return "fast", (
                "int8 weights with a scale and offset per 32 columns, float32 activations, "
                f"bfloat16 prompt matmuls; {backend()} (workbench.models.fast)"
            )
        if self.inference == "reference":
            return "reference", "float32 weights (LearningConfig.inference='reference')"
        why = fast_unavailable(snap.model) or "not built"
        return "reference", f"float32 weights; no fast copy: {why}"

    def set_inference(
        self, inference: str, model: Transformer, version: int, tokenizer: Tokenizer
    ) -> None:
        """Switch paths and republish ``model`` on the new one (called by the worker)."""
        if inference not in INFERENCE_PATHS:
            raise ValueError(f"inference must be 'fast' or 'reference', got {inference!r}")
        if inference != self.inference:
            self.inference = inference
            self.publish(model, version, tokenizer)

    def _build_fast(self, snap: Snapshot, model: Transformer) -> None:
        """Give ``snap`` (not yet visible to readers) a fast copy of ``model``'s weights."""
        if self.inference != "fast" or fast_unavailable(model) is not None:
            snap.fast = None
            return
        start = time.perf_counter()
        # quantizing is compute-bound: SmolLM2's 134M weights took ~150 ms on one core
        with self.spare_cores():
            if snap.fast is not None and snap.fast.cfg == model.cfg:
                snap.fast.refresh(model)
            else:
                snap.fast = None  # the old copy goes before the new one is allocated
                snap.fast = FastTransformer(model)
        snap.refresh_s = time.perf_counter() - start

    @contextmanager
    def spare_cores(self) -> Iterator[None]:
        """Run the worker's block on every free core while nobody reads (its own count when
        someone does): copies and quantizing, which readers never wait for. SmolLM2's undo
        point (1.6 GB of weights and moments) took 0.25 s on one thread, 0.15 s on two."""
        own = torch.get_num_threads()
        want = own if self.readers_recent() else max(own, free_cores(own))
        if want == own:
            yield
            return
        torch.set_num_threads(want)
        try:
            yield
        finally:
            torch.set_num_threads(own)
            release_thread_team()  # the worker runs on its own count again

    @property
    def version(self) -> int:
        return self._current.version

    @contextmanager
    def reading(self, threads: int | None = None) -> Iterator[Snapshot]:
        """Hold the current snapshot for the duration of a read; with ``threads`` (the
        reader's own intra-op thread count) the read is paced (``pace``)."""
        with self._lock:
            snap = self._current
            snap.readers += 1
            self._active += 1
        start = time.perf_counter()
        outer, _PACED.threads = getattr(_PACED, "threads", None), threads
        try:
            yield snap
        finally:
            _PACED.threads = outer
            end = time.perf_counter()
            with self._lock:
                snap.readers -= 1
                self._active -= 1
                if end - start >= HEAVY_READ_S:  # inference, not a look at the tokenizer
                    self._last_read = end
                if self._active == 0:
                    self._unread.notify_all()

    def pace(self) -> None:
        """In a paced read (between two of its blocks, or tokens): one intra-op thread while
        the worker computes, the reader's own count while it waits (for work, or for the
        readers: ``yield_to_readers``), so a read that began beside a training step takes
        every core once the step yields to it, and gives one back when the step goes on.
        Elsewhere nothing."""
        full = getattr(_PACED, "threads", None)
        if full is None:
            return
        want = 1 if self.busy else full
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)
            if want == 1:
                release_thread_team()  # its idle partner would spin on the worker's core

    def readers_recent(self, window: float | None = None) -> bool:
        """Whether anyone reads now or ended an inference (a read held ``HEAVY_READ_S`` or
        more) less than ``window`` s ago (default ``recent_s``): a loop of generations leaves
        gaps of milliseconds between reads, and a worker that took every core in such a gap
        held them into the next read (SmolLM2, 2 cores: 8 tokens took 7x as long as idle,
        against 1.8x with the worker on its own core). The window stays short: a person's
        question every 0.5 s leaves gaps the worker should train in (bench/efficacy.py).
        ``add_example``'s look at the tokenizer, just before an update, does not count."""
        window = self.recent_s if window is None else window
        return self._active > 0 or time.perf_counter() - self._last_read < window

    def yield_to_readers(self, max_wait: float) -> float:
        """Wait (at most ``max_wait`` seconds) while readers are about (``readers_recent``);
        return the wait, > 0 whenever there were readers (even with ``max_wait`` 0).

        The worker calls this between layers (``Trainer.pause``). It waits out the short gaps
        between one read and the next, and is not ``busy`` meanwhile, so generation decodes
        on every core (``pace``) as if the learner were idle: SmolLM2 on 2 cores,
        a token takes 6 ms on 2 threads and 10 ms on 1.
        """
        if not self.readers_recent():
            return 0.0
        start = time.perf_counter()
        deadline = start + max_wait
        if max_wait > 0:
            release_thread_team()  # its idle team would slow every parallel region of theirs
        busy, self.busy = self.busy, max_wait <= 0
        try:
            with self._lock:
                while (left := deadline - time.perf_counter()) > 0:
                    if self._active == 0:
                        quiet = self._last_read + self.recent_s - time.perf_counter()
                        if quiet <= 0:
                            break
                        left = min(left, quiet)  # a read that starts meanwhile is seen then
                    self._unread.wait(timeout=left)
        finally:
            self.busy = busy
        return max(time.perf_counter() - start, 1e-9)

    @torch.no_grad()
    def publish(self, model: Transformer, version: int, tokenizer: Tokenizer) -> None:
        """Make ``model``'s current weights the ones inference sees (called by the worker)."""
        with self._lock:
            spare = next((s for s in self._pool if s.readers == 0), None)
            if spare is not None:
                self._pool.remove(spare)
        source = stamp(model)
        if spare is not None and _same_layout(spare.model, model):
            if spare.source != source:  # (an edit kept in the memory writes no weight)
                with self.spare_cores():
                    for dst, src in zip(_tensors(spare.model), _tensors(model), strict=True):
                        dst.copy_(src)
            spare.model.edit_memory = model.edit_memory  # immutable: shared, not copied
            spare.version = version
            spare.tokenizer = tokenizer
            fresh = spare
        else:
            fresh = Snapshot(_frozen_copy(model, self.pace), tokenizer, version)
        fresh.source = source
        self._build_fast(fresh, fresh.model)  # the published weights and memory
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
