"""Answers out: JSONL (one line per answer, Prodigy's ``answer`` convention) and pandas.

Pure functions of the answer records the session hands over; pandas is imported only when
asked for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from workbench.labeling.items import LabelingError
from workbench.labeling.table import Answer

__all__ = ["FIELDS", "records", "to_jsonl", "to_pandas"]

FIELDS = (
    "item_id",
    "text",
    "label",
    "answer",
    "scores",
    "model_label",
    "timestamp",
    "weight",
    "model_version",
    "agent",
    "_input_hash",
    "_task_hash",
)


def records(answers: Sequence[Answer], texts: Mapping[str, str]) -> list[dict[str, Any]]:
    """The export fields of each answer (``texts``: item id -> text)."""
    return [
        {
            "item_id": a.item_id,
            "text": texts.get(a.item_id),
            "label": a.label,
            "answer": a.answer,
            "scores": a.scores,
            "model_label": a.model_label,
            "timestamp": a.time,
            "weight": a.weight,
            "model_version": a.model_version,
            "agent": a.agent,
            "_input_hash": a.input_hash,
            "_task_hash": a.task_hash,
        }
        for a in answers
    ]


def to_jsonl(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write ``records`` as JSON lines to ``path`` atomically (a temporary file, then a rename)."""
    path = Path(path)
    if path.is_dir():
        raise LabelingError(f"{path} is a folder: give a file name such as {path / 'labels.jsonl'}")
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps({k: r[k] for k in FIELDS}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise LabelingError(
            f"cannot write {path}: {e.strerror or e}; pick a writable path"
        ) from None
    return path


def to_pandas(records: Sequence[dict[str, Any]]) -> Any:
    """A DataFrame with one row per answer and the columns of ``FIELDS``."""
    try:
        import pandas as pd
    except ImportError:
        raise LabelingError("to_pandas needs pandas: pip install pandas") from None
    return pd.DataFrame([{k: r[k] for k in FIELDS} for r in records], columns=list(FIELDS))
