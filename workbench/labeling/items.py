"""Items to label: texts with stable ids, from lists, CSV, JSONL, DataFrames or Datasets.

An item is a text with an id (given, or a hash of the text) and whatever other fields came with
it. This module knows files and tables, nothing of models or the learner. Every bad input raises
``LabelingError`` with a message that says the fix.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Item", "LabelingError", "input_hash", "load_items"]

TEXT_FIELDS = ("text", "review", "sentence", "content")  # tried in this order for dict items


class LabelingError(ValueError):
    """Bad input to a labeling session; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Item:
    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)  # the other fields


def input_hash(text: str) -> str:
    """A stable short hash of a text (Prodigy's ``_input_hash`` role)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _item(raw: Any, where: str, text_field: str | None) -> Item:
    if isinstance(raw, str):
        text, meta, given = raw, {}, None
    elif isinstance(raw, Mapping):
        names = (text_field,) if text_field else TEXT_FIELDS
        key = next((k for k in names if k in raw), None)
        if key is None:
            raise LabelingError(
                f"{where} has no text field (looked for {', '.join(map(repr, names))}; it has "
                f"{', '.join(map(repr, list(raw)[:8]))}): pass text_field='<column>'"
            )
        text = raw[key]
        meta = {str(k): v for k, v in raw.items() if k not in (key, "id")}
        given = raw.get("id")
    else:
        raise LabelingError(
            f"{where} is a {type(raw).__name__}: items must be strings or dicts with a text field"
        )
    if not isinstance(text, str) or not text.strip():
        raise LabelingError(f"{where} has an empty or non-string text ({text!r}); remove it")
    item_id = input_hash(text) if given is None or given == "" else str(given)
    return Item(item_id, text, meta)


def _rows_from_path(path: Path) -> list[Any]:
    if not path.is_file():
        raise LabelingError(f"{path} is not a file: pass a CSV, TSV or JSONL file of items")
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            rows: list[Any] = []
            with path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise LabelingError(
                                f"{path} line {n} is not JSON ({e.msg}): one JSON object per line"
                            ) from None
            return rows
        if suffix in (".csv", ".tsv"):
            with path.open(encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    except (OSError, UnicodeDecodeError) as e:
        raise LabelingError(f"cannot read {path}: {e}; pass a UTF-8 CSV, TSV or JSONL") from None
    raise LabelingError(f"{path} is neither .csv, .tsv nor .jsonl: convert it to one of those")


def _rows(source: Any) -> Iterable[Any]:
    if isinstance(source, Path) or (
        isinstance(source, str)
        and "\n" not in source
        and Path(source).suffix.lower() in (".csv", ".tsv", ".jsonl", ".ndjson")
    ):
        return _rows_from_path(Path(source))
    to_dict = getattr(source, "to_dict", None)
    if callable(to_dict) and hasattr(source, "columns"):  # a pandas DataFrame
        return list(to_dict(orient="records"))
    if hasattr(source, "column_names") and hasattr(source, "__iter__"):  # a datasets.Dataset
        return list(source)
    if isinstance(source, str | Mapping) or not isinstance(source, Iterable):
        raise LabelingError(
            f"items must be a list of texts or dicts, a CSV/TSV/JSONL path, a DataFrame or a "
            f"datasets.Dataset, got {type(source).__name__}"
        )
    return source


def load_items(source: Any, text_field: str | None = None) -> list[Item]:
    """Items from ``source``, in order, duplicates (same id) dropped.

    >>> [i.text for i in load_items(["good", {"text": "bad", "stars": 1}, "good"])]
    ['good', 'bad']
    >>> load_items([])
    Traceback (most recent call last):
    ...
    workbench.labeling.items.LabelingError: no items to label: pass at least one text
    """
    items: dict[str, Item] = {}
    for n, raw in enumerate(_rows(source)):
        item = _item(raw, f"item {n}", text_field)
        items.setdefault(item.id, item)
    if not items:
        raise LabelingError("no items to label: pass at least one text")
    return list(items.values())
