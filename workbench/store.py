"""The session's durable log: examples and updates in SQLite (WAL mode).

An example is acknowledged only after its INSERT has committed, so a crash after ``add``
returns never loses it; its id makes a retried ``add`` a no-op rather than a duplicate. The
learner's in-memory buffer is a cache of this table and can always be rebuilt from it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["ExampleRecord", "ExampleStore", "StoreError", "UpdateRecord"]

Status = Literal["stored", "trained", "removed", "undone"]
_LIVE = "status NOT IN ('removed', 'undone')"  # what the learner still trains on

_SCHEMA = """
CREATE TABLE IF NOT EXISTS examples (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    input TEXT NOT NULL,
    target TEXT,
    weight REAL NOT NULL,
    created REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'stored',
    trained_count INTEGER NOT NULL DEFAULT 0,
    messages TEXT,  -- JSON conversation of a chat example; NULL for a plain one
    method TEXT  -- 'edit' or 'finetune' for this example; NULL: the learner's update_method
);
CREATE TABLE IF NOT EXISTS updates (
    n INTEGER PRIMARY KEY,
    loss REAL NOT NULL,
    lr REAL NOT NULL,
    time REAL NOT NULL,
    duration_ms REAL NOT NULL,
    examples INTEGER NOT NULL,
    grad_norm REAL
);
"""


class StoreError(RuntimeError):
    """The session store cannot be opened or written; the message says why."""


@dataclass(frozen=True)
class ExampleRecord:
    seq: int
    id: str
    input: str
    target: str | None
    weight: float
    created: float
    status: Status
    trained_count: int
    messages: tuple[dict[str, str], ...] | None = None  # a chat example's conversation
    method: str | None = None  # "edit" / "finetune"; None: the learner's update_method


@dataclass(frozen=True)
class UpdateRecord:
    n: int  # 1-based update number
    loss: float
    lr: float
    time: float  # unix time at the end of the update
    duration_ms: float
    examples: int
    grad_norm: float | None


_EXAMPLE_COLUMNS = (
    "seq, id, input, target, weight, created, status, trained_count, messages, method"
)


def _record(row: tuple[Any, ...]) -> ExampleRecord:
    seq, id, input, target, weight, created, status, trained, messages, method = row
    conversation = None if messages is None else tuple(json.loads(messages))
    return ExampleRecord(
        seq, id, input, target, weight, created, status, trained, conversation, method
    )


class ExampleStore:
    """One SQLite file per session, safe to call from several threads.

    ``synchronous`` = ``"FULL"`` fsyncs every commit (durable across power loss);
    ``"NORMAL"`` in WAL mode is durable across process crashes and much faster.
    """

    def __init__(self, path: str | Path, synchronous: Literal["FULL", "NORMAL"] = "NORMAL") -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(examples)")}
            # sessions written before chat examples, or per-example methods, existed
            for column in ("messages", "method"):
                if column not in columns:
                    self._db.execute(f"ALTER TABLE examples ADD COLUMN {column} TEXT")
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"cannot open the session store {self.path}: {e}") from e
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ----------------------------------------------------------------- examples
    def add(
        self,
        example_id: str,
        input: str,
        target: str | None,
        weight: float,
        messages: Sequence[dict[str, str]] | None = None,
        method: str | None = None,
    ) -> tuple[ExampleRecord, bool]:
        """Insert and commit; returns the record and whether it was new (False: a retry)."""
        conversation = None if messages is None else json.dumps(list(messages))
        with self._lock:
            try:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO examples "
                    "(id, input, target, weight, created, messages, method) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (example_id, input, target, weight, time.time(), conversation, method),
                )
                created = cur.rowcount == 1
                row = self._db.execute(
                    f"SELECT {_EXAMPLE_COLUMNS} FROM examples WHERE id = ?", (example_id,)
                ).fetchone()
            except sqlite3.Error as e:
                raise StoreError(f"cannot store the example: {e}") from e
        return _record(row), created

    def get(self, example_id: str) -> ExampleRecord | None:
        rows = self._rows(f"SELECT {_EXAMPLE_COLUMNS} FROM examples WHERE id = ?", (example_id,))
        return _record(rows[0]) if rows else None

    def examples_after(self, seq: int) -> list[ExampleRecord]:
        """Live (not removed or undone) examples after ``seq``, oldest first."""
        rows = self._rows(
            f"SELECT {_EXAMPLE_COLUMNS} FROM examples WHERE seq > ? AND {_LIVE} ORDER BY seq",
            (seq,),
        )
        return [_record(r) for r in rows]

    def latest(
        self, n: int, up_to_seq: int | None = None, include_removed: bool = False
    ) -> list[ExampleRecord]:
        """The newest ``n`` examples (optionally with ``seq <= up_to_seq``), oldest first."""
        bound = up_to_seq if up_to_seq is not None else 2**62
        live = "" if include_removed else f"{_LIVE} AND "
        rows = self._rows(
            f"SELECT {_EXAMPLE_COLUMNS} FROM examples WHERE {live}seq <= ? "
            "ORDER BY seq DESC LIMIT ?",
            (bound, n),
        )
        return [_record(r) for r in reversed(rows)]

    def count(self) -> int:
        """How many live (not removed or undone) examples the session holds."""
        return int(self._rows(f"SELECT COUNT(*) FROM examples WHERE {_LIVE}")[0][0])

    def mark_trained(self, seqs: Iterable[int]) -> None:
        ids = [(s,) for s in seqs]
        if not ids:
            return
        with self._lock:
            self._db.executemany(
                f"UPDATE examples SET status = CASE WHEN {_LIVE} THEN 'trained' ELSE status "
                "END, trained_count = trained_count + 1 WHERE seq = ?",
                ids,
            )

    def remove(self, example_id: str) -> bool:
        """Soft-delete an example (kept on disk, never trained on again)."""
        with self._lock:
            cur = self._db.execute(
                f"UPDATE examples SET status = 'removed' WHERE id = ? AND {_LIVE}",
                (example_id,),
            )
        return cur.rowcount == 1

    def undo_update(self, new: Iterable[int], batch: Iterable[int]) -> int:
        """Take back one update: its ``batch`` was trained once less, and its ``new`` examples
        are marked undone (kept on disk, never trained on again). Returns how many became
        undone."""
        with self._lock:
            self._db.executemany(
                "UPDATE examples SET trained_count = MAX(trained_count - 1, 0) WHERE seq = ?",
                [(s,) for s in batch],
            )
            cur = self._db.executemany(
                f"UPDATE examples SET status = 'undone' WHERE seq = ? AND {_LIVE}",
                [(s,) for s in new],
            )
        return max(cur.rowcount, 0)

    # ----------------------------------------------------------------- updates
    def add_updates(self, records: Sequence[UpdateRecord]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO updates VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.n, r.loss, r.lr, r.time, r.duration_ms, r.examples, r.grad_norm)
                    for r in records
                ],
            )

    def updates(self) -> list[UpdateRecord]:
        """Every recorded update, oldest first."""
        return [UpdateRecord(*r) for r in self._rows("SELECT * FROM updates ORDER BY n")]

    def truncate_updates(self, keep_up_to: int) -> None:
        """Forget updates past ``keep_up_to`` (after resuming from an older checkpoint)."""
        with self._lock:
            self._db.execute("DELETE FROM updates WHERE n > ?", (keep_up_to,))
