"""Acquisition order: which unanswered item the person sees next.

``"uncertainty"`` picks the smallest margin between the two most likely labels (breaking ties,
which Schröder et al. 2022 found better than entropy for text), ``"entropy"`` the highest label
entropy, ``"random"`` any item, ``"sequential"`` the first in the item order. A share of picks
(``random_share``) is random whatever the order, as superintendent's ``shuffle_prop``, so rare
classes and the model's blind spots still come up. Pure functions of probabilities and a
random generator; nothing here knows models or sessions.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal

from workbench.labeling.items import LabelingError

__all__ = ["ORDERS", "Order", "check_order", "entropy", "margin", "pick"]

Order = Literal["uncertainty", "entropy", "random", "sequential"]
ORDERS: tuple[str, ...] = ("uncertainty", "entropy", "random", "sequential")
NEEDS_SCORES = ("uncertainty", "entropy")


def check_order(order: object, random_share: object) -> None:
    if order not in ORDERS:
        raise LabelingError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    if (
        isinstance(random_share, bool)
        or not isinstance(random_share, int | float)
        or not 0 <= random_share <= 1
    ):
        raise LabelingError(f"random_share must be a number in [0, 1], got {random_share!r}")


def margin(probs: Sequence[float]) -> float:
    """Top-1 minus top-2 probability (1.0 with a single label).

    >>> margin([0.5, 0.3, 0.2])
    0.2
    """
    top = sorted(probs, reverse=True)
    return top[0] - (top[1] if len(top) > 1 else 0.0)


def entropy(probs: Sequence[float]) -> float:
    """Entropy in nats."""
    return -sum(p * math.log(p) for p in probs if p > 0)


def pick(order: Order, probs: Sequence[Sequence[float]], rng: random.Random) -> int:
    """Index of the next candidate: ``probs`` holds one distribution per candidate, in the
    candidates' order (``"sequential"`` takes the first, ``"random"`` any)."""
    if not probs:
        raise LabelingError("no candidates to choose from")
    if order == "sequential":
        return 0
    if order == "random":
        return rng.randrange(len(probs))
    if order == "uncertainty":
        return min(range(len(probs)), key=lambda i: margin(probs[i]))
    if order == "entropy":
        return max(range(len(probs)), key=lambda i: entropy(probs[i]))
    raise LabelingError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
