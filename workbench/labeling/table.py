"""The labeling session's durable tables, in the learner's session SQLite file (WAL mode).

Three tables beside the learner's ``examples`` and ``updates``: ``label_sessions`` (labels and
prompt per session name), ``label_items`` (the items, in order) and ``label_answers`` (one row
per answer, never deleted: undo marks a row). Every write commits before it returns, so an
answer acknowledged to the person survives kill -9. A separate connection from the learner's
own store; SQLite's WAL lets both write the file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from workbench.labeling.items import Item, LabelingError

__all__ = ["Answer", "AnswerTable"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS label_sessions (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,  -- JSON: labels, verbalizations, template, chat
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS label_items (
    session TEXT NOT NULL,
    id TEXT NOT NULL,
    position INTEGER NOT NULL,
    text TEXT NOT NULL,
    meta TEXT NOT NULL,
    PRIMARY KEY (session, id)
);
CREATE TABLE IF NOT EXISTS label_answers (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL,
    item_id TEXT NOT NULL,
    answer TEXT NOT NULL,       -- accept | reject | skip
    label TEXT,                 -- the label the person gave (NULL for skip)
    model_label TEXT,           -- the model's suggestion when the item was asked
    scores TEXT NOT NULL,       -- JSON {label: calibrated probability} at ask time
    weight REAL NOT NULL,
    time REAL NOT NULL,
    model_version INTEGER NOT NULL,
    updates_at INTEGER NOT NULL,  -- the learner's update count when answered
    example_id TEXT,            -- the training example it became (NULL: none)
    example_added INTEGER NOT NULL DEFAULT 0,
    undone INTEGER NOT NULL DEFAULT 0,
    input_hash TEXT NOT NULL,
    task_hash TEXT NOT NULL,
    agent TEXT NOT NULL DEFAULT 'person'
);
CREATE INDEX IF NOT EXISTS label_answers_session ON label_answers (session, undone);
"""

AnswerKind = Literal["accept", "reject", "skip"]
_COLUMNS = (
    "n, item_id, answer, label, model_label, scores, weight, time, model_version, updates_at, "
    "example_id, example_added, undone, input_hash, task_hash, agent"
)


@dataclass(frozen=True)
class Answer:
    n: int  # order of answering, 1-based over the file
    item_id: str
    answer: AnswerKind
    label: str | None
    model_label: str | None
    scores: dict[str, float]
    weight: float
    time: float
    model_version: int
    updates_at: int
    example_id: str | None
    example_added: bool
    undone: bool
    input_hash: str
    task_hash: str
    agent: str


def _answer(row: tuple[Any, ...]) -> Answer:
    r = list(row)
    r[5] = json.loads(r[5])
    r[11], r[12] = bool(r[11]), bool(r[12])
    return Answer(*r)


class AnswerTable:
    """The labeling tables of one session name in one SQLite file; safe across threads."""

    def __init__(self, path: Path, session: str, fsync: bool = False) -> None:
        self.path, self.session = path, session
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise LabelingError(
                f"cannot open the labeling tables in {path}: {e}; pass a writable folder"
            ) from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise LabelingError(f"the labeling table in {self.path} failed: {e}") from None

    # ----------------------------------------------------------------- config and items
    def config(self) -> dict[str, Any] | None:
        rows = self._run("SELECT config FROM label_sessions WHERE name = ?", (self.session,))
        return json.loads(rows[0][0]) if rows else None

    def save_config(self, config: dict[str, Any]) -> None:
        self._run(
            "INSERT INTO label_sessions (name, config, created) VALUES (?, ?, ?)",
            (self.session, json.dumps(config), time.time()),
        )

    def items(self) -> list[Item]:
        rows = self._run(
            "SELECT id, text, meta FROM label_items WHERE session = ? ORDER BY position",
            (self.session,),
        )
        return [Item(i, t, json.loads(m)) for i, t, m in rows]

    def add_items(self, items: Sequence[Item]) -> int:
        """Append the items not stored yet (by id); returns how many were new."""
        with self._lock:
            try:
                start = self._db.execute(
                    "SELECT COALESCE(MAX(position), -1) + 1 FROM label_items WHERE session = ?",
                    (self.session,),
                ).fetchone()[0]
                self._db.execute("BEGIN")
                new = 0
                for item in items:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO label_items VALUES (?, ?, ?, ?, ?)",
                        (
                            self.session,
                            item.id,
                            start + new,
                            item.text,
                            json.dumps(item.meta, default=str),
                        ),
                    )
                    new += cur.rowcount
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise LabelingError(f"cannot store the items in {self.path}: {e}") from None
        return new

    # ----------------------------------------------------------------- answers
    def add(self, **values: Any) -> Answer:
        """Insert and commit one answer; returns it with its number."""
        values["scores"] = json.dumps(values["scores"])
        names = ", ".join(["session", *values])
        marks = ", ".join("?" * (len(values) + 1))
        with self._lock:
            try:
                cur = self._db.execute(
                    f"INSERT INTO label_answers ({names}) VALUES ({marks})",
                    (self.session, *values.values()),
                )
                row = self._db.execute(
                    f"SELECT {_COLUMNS} FROM label_answers WHERE n = ?", (cur.lastrowid,)
                ).fetchone()
            except sqlite3.Error as e:
                raise LabelingError(f"cannot store the answer in {self.path}: {e}") from None
        return _answer(row)

    def answers(self, include_undone: bool = False) -> list[Answer]:
        live = "" if include_undone else " AND undone = 0"
        rows = self._run(
            f"SELECT {_COLUMNS} FROM label_answers WHERE session = ?{live} ORDER BY n",
            (self.session,),
        )
        return [_answer(r) for r in rows]

    def set(self, n: int, **values: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in values)
        self._run(f"UPDATE label_answers SET {sets} WHERE n = ?", (*values.values(), n))
