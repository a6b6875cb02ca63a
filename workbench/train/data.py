"""The examples an offline run trains on: an immutable snapshot, tokenized, cut into global batches.

The boundary: a live session store is only ever read once, by :func:`snapshot_store`, through
SQLite's backup API (a consistent copy even while the learner writes), and only examples up to
a cutoff sequence number are kept. Workers read the snapshot (opened ``immutable``) or a JSONL
file; they never open the live file, so any number of processes on any number of hosts can
read the same data. Batches are planned by global position (``samples_seen``), independent of
the world size, so a run resumed on another number of ranks sees the same examples.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import torch
from torch import Tensor

from workbench.batching import Encoded, encode_example
from workbench.formats.atomic import atomic_writer
from workbench.losses import IGNORE
from workbench.tokenizers import Tokenizer
from workbench.train.config import TrainError

__all__ = [
    "Example",
    "Snapshot",
    "encode",
    "local_slice",
    "read_examples",
    "snapshot_store",
    "step_indices",
]

_SQLITE_MAGIC = b"SQLite format 3\x00"
_STORE_NAME = "examples.sqlite"  # the learner's store inside a session folder


@dataclass(frozen=True)
class Example:
    seq: int  # the store's sequence number (line number for JSONL)
    input: str
    target: str | None
    weight: float


@dataclass(frozen=True)
class Snapshot:
    path: Path
    cutoff: int  # the highest sequence number the snapshot may hold
    examples: int  # live examples kept
    skipped_chat: int  # chat examples (conversations) left out: not trained offline yet


def _store_file(path: Path) -> Path:
    if path.is_dir():
        path = path / _STORE_NAME
    if not path.is_file():
        raise TrainError(f"no session store at {path}: give a session folder or its {_STORE_NAME}")
    return path


def snapshot_store(store: str | Path, target: str | Path, cutoff: int | None = None) -> Snapshot:
    """Copy a session's example log to ``target``, keeping live examples with ``seq <= cutoff``.

    The copy is taken with SQLite's backup API over a read-only connection, so it is consistent
    while the learner keeps writing; it is written atomically and marked as a snapshot (table
    ``snapshot``: cutoff, source, time). ``cutoff=None`` takes every example committed so far;
    the learner replays the ones after the cutoff when it adopts the result.
    """
    src_path = _store_file(Path(store))
    target = Path(target)
    try:
        src = sqlite3.connect(f"file:{quote(str(src_path.resolve()))}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise TrainError(f"cannot open the session store {src_path}: {e}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".snapshot-") as tmp:
        work = Path(tmp) / "snapshot.sqlite"
        dst = sqlite3.connect(work, isolation_level=None)
        try:
            src.backup(dst)
            tables = {r[0] for r in dst.execute("SELECT name FROM sqlite_master")}
            if "examples" not in tables:
                raise TrainError(f"{src_path} holds no examples table: is it a session store?")
            top = dst.execute("SELECT COALESCE(MAX(seq), 0) FROM examples").fetchone()[0]
            cut = int(top) if cutoff is None else int(cutoff)
            dst.execute("PRAGMA journal_mode=DELETE")
            dst.execute("BEGIN")
            dst.execute(
                "DELETE FROM examples WHERE seq > ? OR status IN ('removed', 'undone')", (cut,)
            )
            dst.execute("CREATE TABLE snapshot (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            meta = {"cutoff": str(cut), "source": str(src_path.resolve()), "time": str(time.time())}
            dst.executemany("INSERT INTO snapshot VALUES (?, ?)", list(meta.items()))
            dst.execute("COMMIT")
            dst.execute("VACUUM")
            n = dst.execute("SELECT COUNT(*) FROM examples WHERE messages IS NULL").fetchone()[0]
            chat = dst.execute("SELECT COUNT(*) FROM examples WHERE messages IS NOT NULL")
            skipped = chat.fetchone()[0]
        except sqlite3.Error as e:
            raise TrainError(f"cannot snapshot {src_path}: {e}") from None
        finally:
            dst.close()
            src.close()
        with open(work, "rb") as f, atomic_writer(target) as out:
            shutil.copyfileobj(f, out)
    return Snapshot(target, cut, int(n), int(skipped))


def _read_snapshot(path: Path) -> tuple[list[Example], dict[str, str]]:
    try:
        db = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as e:
        raise TrainError(f"cannot open {path}: {e}") from None
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        if "snapshot" not in tables:
            raise TrainError(
                f"{path} is a live session store, which several processes must not read: "
                "take a snapshot first with workbench.train.snapshot_store(store, target) "
                "(`workbench train` and workbench.train.launch do it for you)"
            )
        meta = dict(db.execute("SELECT key, value FROM snapshot").fetchall())
        rows = db.execute(
            "SELECT seq, input, target, weight FROM examples "
            "WHERE messages IS NULL AND status NOT IN ('removed', 'undone') ORDER BY seq"
        ).fetchall()
    except sqlite3.Error as e:
        raise TrainError(f"cannot read the snapshot {path}: {e}") from None
    finally:
        db.close()
    return [Example(int(s), i, t, float(w)) for s, i, t, w in rows], meta


def _read_jsonl(path: Path) -> list[Example]:
    out: list[Example] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("input"), str):
                    raise ValueError('needs an object with a string "input"')
                target = row.get("target")
                weight = float(row.get("weight", 1.0))
                if target is not None and not isinstance(target, str):
                    raise ValueError('"target" must be a string or null')
                if not math.isfinite(weight) or weight < 0:
                    raise ValueError('"weight" must be a finite number >= 0')
            except (ValueError, TypeError) as e:
                raise TrainError(
                    f"{path} line {n}: {e} (one JSON object per line: "
                    '{"input": "...", "target": "..." or null, "weight": 1.0})'
                ) from None
            out.append(Example(n, row["input"], target, weight))
    return out


def read_examples(path: str | Path) -> tuple[list[Example], dict[str, str]]:
    """Examples from a snapshot (with its metadata: cutoff, source) or a JSONL file."""
    path = Path(path)
    try:
        head = path.read_bytes()[:16] if path.is_file() else None
    except OSError as e:
        raise TrainError(f"cannot read {path}: {e.strerror}") from None
    if head is None:
        raise TrainError(
            f"no data at {path}: give a snapshot (workbench.train.snapshot_store) or a JSONL file"
        )
    if head == _SQLITE_MAGIC:
        examples, meta = _read_snapshot(path)
    else:
        examples, meta = _read_jsonl(path), {"source": str(path.resolve())}
    if not examples:
        raise TrainError(f"{path} holds no examples to train on: add examples or move the cutoff")
    if not sum(e.weight for e in examples) > 0:
        raise TrainError(f"every example in {path} has weight 0: nothing to learn")
    return examples, meta


def encode(tokenizer: Tokenizer, e: Example, max_len: int) -> Encoded:
    """The live learner's encoding (``workbench.batching.encode_example``): loss on the target
    and eos for a supervised example, on every predictable token for a plain text.

    >>> from workbench.tokenizers import ByteTokenizer
    >>> encode(ByteTokenizer(), Example(1, "ab", "c", 1.0), 16).labels
    (-100, 99, 256)
    """
    return encode_example(tokenizer, e.seq, e.input, e.target, e.weight, max_len)


def step_indices(n: int, step: int, global_batch: int, seed: int) -> list[int]:
    """Indices of the examples of optimizer step ``step`` (0-based): positions
    ``[step·B, (step+1)·B)`` of a stream of epochs, each a permutation drawn from ``seed`` and
    the epoch number. It depends on neither the world size nor the rank.
    """
    out: list[int] = []
    for pos in range(step * global_batch, (step + 1) * global_batch):
        epoch, k = divmod(pos, n)
        out.append(_epoch_order(n, seed, epoch)[k])
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(n, generator=gen).tolist())


def local_slice(items: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s contiguous part of a global batch; parts differ by at most one."""
    q, r = divmod(len(items), world_size)
    lo = rank * q + min(rank, r)
    return list(items[lo : lo + q + (1 if rank < r else 0)])


def collate(
    rows: Sequence[Encoded], pad_id: int, width: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(ids, labels, weights)``: ids and labels right-padded to ``(B, width)`` (default: the
    longest row) and ``(B,)`` weights."""
    T = max(len(r.ids) for r in rows) if width is None else width
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = torch.tensor(r.ids)
        labels[i, : len(r.labels)] = torch.tensor(r.labels)
    return ids, labels, torch.tensor([r.weight for r in rows], dtype=torch.float32)
