"""The layers above an edit, run for the residual's optimization: an edit's residual enters
at its key word, so positions before the first key word do not depend on it. ``Above`` runs
them once and caches their keys and values; each optimization step then runs only the rest
(the key words, what follows them and the targets) on that cache.
"""

from __future__ import annotations

import torch
from torch import Tensor

from workbench.models import Transformer
from workbench.models.transformer import KVCache, Rope

__all__ = ["Above"]


class Above:
    """The layers from ``first`` up, run on the positions from ``start`` on over the cached keys
    and values of the positions before (computed once, without gradients)."""

    def __init__(self, m: Transformer, x: Tensor, rope: Rope | None, first: int, start: int):
        self.m, self.first, self.start, self.shape = m, first, start, x.shape
        self.rope = _rope_from(rope, start, x.shape[1])
        self.prefix: list[tuple[Tensor, Tensor]] = []
        if start > 0:
            cache = KVCache(m.cfg, x.shape[0], x.shape[1], x.device, x.dtype)
            with torch.no_grad():
                m.run_blocks(x[:, :start], _rope_from(rope, 0, start), first, len(m.blocks), cache)
            self.prefix = [
                (cache.k[i][:, :, :start].clone(), cache.v[i][:, :, :start].clone())
                for i in range(first, len(m.blocks))
            ]

    def run(self, suffix: Tensor) -> Tensor:
        """The stream after the top layer at the positions from ``start`` on."""
        m = self.m
        if not self.prefix:
            return m.run_blocks(suffix, self.rope, self.first, len(m.blocks))
        # a fresh cache per step: the last step's writes hold its autograd graph
        cache = KVCache(m.cfg, self.shape[0], self.shape[1], suffix.device, suffix.dtype)
        for i, (k, v) in zip(range(self.first, len(m.blocks)), self.prefix, strict=True):
            cache.k[i][:, :, : self.start] = k
            cache.v[i][:, :, : self.start] = v
        cache.pos = self.start
        return m.run_blocks(suffix, self.rope, self.first, len(m.blocks), cache)


def _rope_from(rope: Rope | None, start: int, stop: int) -> Rope | None:
    """The rotary tables of positions ``start..stop-1``."""
    if rope is None:
        return None
    (c, s), (cl, sl) = rope
    return (c[start:stop], s[start:stop]), (cl[start:stop], sl[start:stop])
