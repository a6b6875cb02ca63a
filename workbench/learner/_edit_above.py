"""The layers above an edit, run for the residual's optimization: an edit's residual enters
at its key word, so positions before the first key word do not depend on it. ``Above`` runs
them once and caches their keys and values; each optimization step then runs only the rest
(the key words, what follows them and the targets) on that cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from workbench.models import Transformer
from workbench.models.transformer import KVCache, Rope

__all__ = ["Above", "Part", "split"]


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


@dataclass
class Part:
    """Some of the examples of a residual optimization, run through the layers above together
    (a part's graph is freed before the next part runs: peak memory follows the part)."""

    live: Tensor  # the part's rows among the examples that carry a residual
    out: Tensor  # their stream after the edited layer, (rows, T, C)
    where: tuple[Tensor, Tensor]  # (row in the part, position) of each residual entry
    groups: Tensor  # the residual (key word) each entry adds
    rows: Tensor  # target positions: row in the part,
    cols: Tensor  # column from ``start`` on,
    targets: Tensor  # and token
    start: int  # first position that depends on a residual
    above: Above


def split(
    m: Transformer,
    out: Tensor,
    rope: Rope | None,
    first: int,
    entries: tuple[Tensor, Tensor, Tensor],
    targets: tuple[Tensor, Tensor, Tensor],
    size: int,
) -> list[Part]:
    """``out``'s rows in parts of at most ``size``. ``entries``: (row, position, group) of each
    residual entry; ``targets``: (row, column, token) of each target position."""
    e_rows, e_pos, e_groups = entries
    t_rows, t_cols, t_tokens = targets
    parts = []
    for lo in range(0, out.shape[0], size):
        hi = min(lo + size, out.shape[0])
        e = (e_rows >= lo) & (e_rows < hi)
        t = (t_rows >= lo) & (t_rows < hi)
        start = int(e_pos[e].min())  # every row carries an entry
        parts.append(
            Part(
                torch.arange(lo, hi, device=out.device),
                out[lo:hi],
                (e_rows[e] - lo, e_pos[e]),
                e_groups[e],
                t_rows[t] - lo,
                t_cols[t] - start,  # every target lies after its example's key word
                t_tokens[t],
                start,
                Above(m, out[lo:hi], rope, first, start),
            )
        )
    return parts
