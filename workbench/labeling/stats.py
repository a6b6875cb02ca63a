"""Session statistics from the answers: progress, agreement of the model's suggestion with
the person (its live accuracy estimate) and labeling speed. Pure functions of answer rows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from workbench.labeling.table import Answer

__all__ = ["agreed", "agreement_curve", "summary", "wilson"]


def agreed(a: Answer) -> bool:
    """Whether the model's suggestion was the person's answer (a reject never agrees)."""
    return a.answer == "accept" and a.label == a.model_label


def summary(
    answers: Sequence[Answer], total: int, labels: Sequence[str], window: int
) -> dict[str, Any]:
    judged = [a for a in answers if a.answer != "skip"]
    recent = judged[-window:]
    agree = sum(agreed(a) for a in recent)
    lo, hi = wilson(agree, len(recent))
    times = [a.time for a in answers[-window:]]
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    counts = {label: 0 for label in labels}
    for a in answers:
        if a.label is not None:
            counts[a.label] += 1
    return {
        "answered": len(answers),
        "remaining": total - len({a.item_id for a in answers}),
        "total": total,
        "skipped": len(answers) - len(judged),
        "agreement": agree / len(recent) if recent else None,
        "accuracy_estimate": agree / len(recent) if recent else None,
        "accuracy_interval": (lo, hi),
        "window": len(recent),
        "labels_per_minute": (len(times) - 1) * 60 / span if span > 0 else 0.0,
        "by_label": counts,
    }


def agreement_curve(answers: Sequence[Answer], window: int) -> list[float]:
    marks = [agreed(a) for a in answers if a.answer != "skip"]
    out = []
    for i in range(len(marks)):
        part = marks[max(0, i + 1 - window) : i + 1]
        out.append(sum(part) / len(part))
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)
