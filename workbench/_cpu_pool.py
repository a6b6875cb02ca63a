"""A pool of big CPU blocks for the threads that opt in: the learner's worker trains in it.

PyTorch caches no freed CPU memory, so every training step faults its gradients and
activations in afresh (SmolLM2-135M: ~900 MB of new pages, 220k page faults per forward and
backward; system time was 40-70% of user time). ``csrc/cpu_pool.cpp`` wraps torch's CPU
allocator once: a thread inside :func:`pooled` takes its allocations of 1 MB or more from
blocks freed earlier, and those go back to the pool while it holds less than its cap
(:func:`set_cap`, default 1 GiB); other threads and small allocations are untouched.

The pool lives in the fused optimizers' library (``workbench.optim._build``); where that
library does not build, :func:`pooled` yields False and allocation stays torch's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from workbench.optim import _build

__all__ = ["PoolStats", "available", "flush", "pooled", "set_cap", "stats"]


@dataclass(frozen=True)
class PoolStats:
    cached_bytes: int  # freed blocks kept for reuse
    cap_bytes: int  # most the pool keeps cached
    blocks: int  # pooled blocks, in use or cached
    cached_blocks: int
    hits: int  # allocations served from a cached block
    misses: int  # pooled allocations that had to ask the system


def available() -> bool:
    """Whether the pool's library is loaded (building it once if needed)."""
    return _build.ensure_loaded() and hasattr(torch.ops.workbench_optim, "pool_enter")


@contextmanager
def pooled() -> Iterator[bool]:
    """Run the block with this thread's big allocations served by the pool; yields whether
    the pool is in use (False where the kernels did not build). Nests."""
    if not available():
        yield False
        return
    torch.ops.workbench_optim.pool_enter()
    try:
        yield True
    finally:
        torch.ops.workbench_optim.pool_exit()


def stats() -> PoolStats | None:
    """The pool's counters (None where it is not available)."""
    if not available():
        return None
    return PoolStats(*(int(x) for x in torch.ops.workbench_optim.pool_stats()))


def flush() -> int:
    """Free every cached block (the bytes freed; 0 where the pool is not available)."""
    return int(torch.ops.workbench_optim.pool_flush()) if available() else 0


def set_cap(nbytes: int) -> None:
    """Keep at most ``nbytes`` of freed blocks (0: keep none); frees the excess now."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"the pool's cap must be a whole number of bytes >= 0, got {nbytes!r}")
    if available():
        torch.ops.workbench_optim.pool_set_cap(nbytes)
