"""The layers above an edit, run for the residual's optimization: an edit's residual enters
at the tokens its memory entry (or its write-in) reaches, so each example's positions before
the first of those do not depend on it, nor do those after its last target. ``Above`` runs
each example's prefix once and caches its keys and values; each optimization step then runs
only the examples' own stretches (left-aligned in one batch, each at its own positions) over
that cache. On SmolLM2 paraphrases that is about half the positions of a common start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from workbench.models import Transformer
from workbench.models.transformer import KVCache, Rope

__all__ = ["Above", "Part", "groups", "split"]

# What a part costs beyond its slots, in slots: each part reads every weight above once more,
# forward and backward. SmolLM2, 2 threads, a residual step: one part of 8 rows x 9 slots took
# 0.24 s, of 9 x 19 0.39 s (1.5 ms a slot, 0.13 s a part), and 7 x 14 + 2 x 19 0.43 s.
PART_OVERHEAD = 80


class Above:
    """The layers from ``first`` up, run on positions ``starts[i]..ends[i]-1`` of each row ``i``
    over the cached keys and values of that row's positions before ``starts[i]`` (computed
    once, without gradients). ``x``: the stream entering layer ``first``, ``(B, T, C)``."""

    def __init__(
        self,
        m: Transformer,
        x: Tensor,
        rope: Rope | None,
        first: int,
        starts: Sequence[int],
        ends: Sequence[int],
    ):
        B, T, _ = x.shape
        if (
            len(starts) != B
            or len(ends) != B
            or not all(0 <= s < e <= T for s, e in zip(starts, ends, strict=True))
        ):
            raise ValueError(f"each row needs 0 <= start < end <= {T}: {starts}, {ends}")
        self.m, self.first = m, first
        self.width = max(e - s for s, e in zip(starts, ends, strict=True))
        self.prefix_len = max(starts)
        dev = x.device
        start = torch.tensor(list(starts), device=dev)
        at = start[:, None] + torch.arange(self.width, device=dev)  # (B, S): each slot's position
        self.index = at.clamp(max=T - 1)  # a shorter row's slots past its end repeat its last
        self.rope = _rope_at(rope, self.index, same=len(set(starts)) == 1)
        self.valid: Tensor | None = None
        self.prefix: list[tuple[Tensor, Tensor]] = []
        P = self.prefix_len
        if P > 0:
            cache = KVCache(m.cfg, B, P, dev, x.dtype)
            with torch.no_grad():
                m.run_blocks(x[:, :P], _rope_from(rope, 0, P), first, len(m.blocks), cache)
            self.prefix = [
                (cache.k[i].clone(), cache.v[i].clone()) for i in range(first, len(m.blocks))
            ]
            if len(set(starts)) > 1:  # row i holds slots 0..starts[i]-1 of the prefix
                held = torch.arange(P, device=dev)[None, :] < start[:, None]
                self.valid = torch.cat([held, held.new_ones(B, self.width)], dim=1)

    def gather(self, t: Tensor) -> Tensor:
        """Rows ``(B, T, ...)`` of a per-position tensor at the slots ``run`` computes."""
        idx = self.index.view(*self.index.shape, *([1] * (t.ndim - 2)))
        return t.gather(1, idx.expand(-1, -1, *t.shape[2:]))

    def run(self, suffix: Tensor) -> Tensor:
        """The stream after the top layer at the slots ``(B, S, C)`` (``suffix``: the stream
        entering layer ``first`` there, e.g. ``gather(x)`` plus a residual)."""
        m = self.m
        if not self.prefix:
            return m.run_blocks(suffix, self.rope, self.first, len(m.blocks))
        # a fresh cache per step: the last step's writes hold its autograd graph
        B, P = suffix.shape[0], self.prefix_len
        cache = KVCache(m.cfg, B, P + self.width, suffix.device, suffix.dtype)
        for i, (k, v) in zip(range(self.first, len(m.blocks)), self.prefix, strict=True):
            cache.k[i][:, :, :P] = k
            cache.v[i][:, :, :P] = v
        cache.pos, cache.valid = P, self.valid
        return m.run_blocks(suffix, self.rope, self.first, len(m.blocks), cache)


def _rope_from(rope: Rope | None, start: int, stop: int) -> Rope | None:
    """The rotary tables of positions ``start..stop-1``."""
    if rope is None:
        return None
    (c, s), (cl, sl) = rope
    return (c[start:stop], s[start:stop]), (cl[start:stop], sl[start:stop])


def _rope_at(rope: Rope | None, at: Tensor, same: bool) -> Rope | None:
    """The rotary tables at positions ``at`` ``(B, S)``: ``(B, 1, S, hd)`` each (``same``:
    every row at the same positions, the plain ``(S, hd)``)."""
    if rope is None:
        return None
    if same:
        return _rope_from(rope, int(at[0, 0]), int(at[0, 0]) + at.shape[1])
    (c, s), (cl, sl) = rope
    return (c[at][:, None], s[at][:, None]), (cl[at][:, None], sl[at][:, None])


def _ragged(m: Transformer, first: int) -> bool:
    """Whether rows may start at positions of their own: a sliding window's mask counts
    slots as positions, so with one the rows share their start (and end)."""
    return all(getattr(b.attn, "window", None) is None for b in m.blocks[first:])


@dataclass
class Part:
    """Some of the examples of a residual optimization, run through the layers above together
    (a part's graph is freed before the next part runs: peak memory follows the part)."""

    live: Tensor  # the part's rows among the examples that carry a residual (any of them)
    out: Tensor  # their stream entering the layers above at ``above``'s slots, (rows, S, C)
    coef: Tensor  # (rows, S, groups): how much of each residual each slot receives
    rows: Tensor  # target positions: row in the part,
    cols: Tensor  # slot,
    targets: Tensor  # and token
    above: Above


def split(
    m: Transformer,
    out: Tensor,
    rope: Rope | None,
    first: int,
    coef: Tensor,
    targets: tuple[Tensor, Tensor, Tensor],
    size: int,
    fixed: Tensor | None = None,
) -> list[Part]:
    """``out``'s rows (the stream entering layer ``first``, ``(L, T, C)``) in parts of at most
    ``size``. ``coef`` ``(L, T, groups)``: the share of each residual each position receives;
    ``fixed`` ``(L, T)``: positions that change by a constant (already in ``out``);
    ``targets``: (row, column, token) of each target position, every row having some."""
    t_rows, t_cols, t_tokens = targets
    L, T = out.shape[:2]
    changed = coef.ne(0).any(-1) if fixed is None else coef.ne(0).any(-1) | fixed
    starts, ends = [], []
    for r in range(L):
        cols = t_cols[t_rows == r]
        moved = changed[r].nonzero()
        first_moved = int(moved[0, 0]) if len(moved) else T - 1
        starts.append(min(first_moved, int(cols.min())))  # targets before it are constant
        ends.append(int(cols.max()) + 1)
    if not _ragged(m, first):
        starts, ends = [min(starts)] * L, [max(ends)] * L
    parts = []
    local = torch.full((L,), -1, dtype=torch.long, device=out.device)  # row -> row in its part
    for group in groups([e - s for s, e in zip(starts, ends, strict=True)], size):
        rows = torch.tensor(group, device=out.device)
        local[rows] = torch.arange(len(group), device=out.device)
        t = torch.isin(t_rows, rows)
        above = Above(
            m, out[rows], rope, first, [starts[r] for r in group], [ends[r] for r in group]
        )
        row_start = torch.tensor([starts[r] for r in group], device=out.device)
        part_rows = local[t_rows[t]]
        parts.append(
            Part(
                rows,
                above.gather(out[rows]),
                above.gather(coef[rows]),
                part_rows,
                t_cols[t] - row_start[part_rows],
                t_tokens[t],
                above,
            )
        )
    return parts


def groups(widths: Sequence[int], size: int, overhead: int | None = None) -> list[list[int]]:
    """Rows grouped into parts of at most ``size`` rows, each part padded to its widest row:
    sorted by width and cut where that costs least, counting the padded slots plus
    ``overhead`` slots a part: a long reply among short ones gets a part of its own.

    >>> groups([10, 20, 9, 10], size=12, overhead=4)
    [[2, 0, 3], [1]]
    >>> groups([10, 20, 9, 10], size=12, overhead=40)
    [[2, 0, 3, 1]]
    """
    overhead = PART_OVERHEAD if overhead is None else overhead
    order = sorted(range(len(widths)), key=lambda r: widths[r])
    best = [0] + [1 << 62] * len(order)  # best[j]: cost of the first j rows in order
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(max(0, j - size), j):  # a part of rows i..j-1, padded to row j-1's
            cost = best[i] + (j - i) * widths[order[j - 1]] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    out, j = [], len(order)
    while j > 0:
        out.append(order[cut[j] : j])
        j = cut[j]
    return out[::-1]
