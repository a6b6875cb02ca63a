"""Validation of a labeling session's settings and answers, at the boundary: ``LabelingError``
with a message that says the fix."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from workbench.labeling.items import LabelingError

ACTIONS = ("accept", "reject", "skip")


def check_labels(labels: Sequence[str]) -> list[str]:
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise LabelingError(f"labels must be a list of names, got {labels!r}")
    out = list(labels)
    if len(out) < 2:
        raise LabelingError(f"give at least two labels, got {out!r}")
    for lab in out:
        if not isinstance(lab, str) or not lab.strip():
            raise LabelingError(f"label names must be non-empty strings, got {lab!r}")
        if lab in ACTIONS:
            raise LabelingError(
                f"{lab!r} is an answer (accept/reject/skip), not a label: rename it"
            )
    if len(set(out)) != len(out):
        raise LabelingError(f"label names repeat: {out!r}; give each once")
    if len(out) > 20:
        raise LabelingError(f"{len(out)} labels: at most 20 are supported")
    return out


def check_verbalizations(labels: list[str], verbs: Sequence[str] | None) -> list[str]:
    if verbs is None:
        return list(labels)
    out = list(verbs)
    if len(out) != len(labels) or not all(isinstance(v, str) and v.strip() for v in out):
        raise LabelingError(
            f"give one non-empty verbalization per label ({len(labels)}), got {out!r}"
        )
    if len(set(out)) != len(out):
        raise LabelingError(f"verbalizations repeat: {out!r}; give each label its own")
    return out


def check_weight(weight: object) -> float:
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not math.isfinite(weight)
        or weight <= 0
    ):
        raise LabelingError(f"weight must be a finite number > 0, got {weight!r}")
    return float(weight)


def resolve(value: str, suggested: str, labels: Sequence[str]) -> tuple[str, str | None]:
    """(answer kind, label taught) of a label name or accept/reject/skip."""
    if value in labels:
        return "accept", value
    if value == "accept":
        return "accept", suggested
    if value == "reject":
        others = [lab for lab in labels if lab != suggested]
        return "reject", others[0] if len(others) == 1 else None
    return "skip", None


def task_hash(ihash: str, label: str | None, kind: str) -> str:
    return hashlib.sha256(f"{ihash}|{label}|{kind}".encode()).hexdigest()[:16]


def session_config(
    stored: Mapping[str, Any] | None,
    labels: Sequence[str] | None,
    verbalizations: Sequence[str] | None,
    prompt: str | None,
    chat: bool,
    where: str,
) -> dict[str, Any]:
    """The session's labels, verbalizations, template and chat flag: the given ones (which
    must equal ``stored`` when resuming) or, with ``labels=None``, the stored ones."""
    from workbench.labeling.scoring import CHAT_PROMPT, RAW_PROMPT

    if labels is None:
        if stored is None:
            raise LabelingError(f"no labels given and no {where} to resume: pass labels=[...]")
        return dict(stored)
    labels = check_labels(labels)
    config: dict[str, Any] = {
        "labels": labels,
        "verbalizations": check_verbalizations(labels, verbalizations),
        "template": prompt if prompt is not None else (CHAT_PROMPT if chat else RAW_PROMPT),
        "chat": chat,
    }
    if stored is not None and dict(stored) != config:
        raise LabelingError(
            f"{where} was started with {dict(stored)}; resume it with the same labels and "
            "prompt (or labels=None), or pass another name="
        )
    return config
