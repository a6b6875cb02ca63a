"""The session store on real SQLite files: statuses, ordering, the update log, and reopening."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from workbench.store import ExampleStore, StoreError, UpdateRecord


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "session" / "store.sqlite"  # the parent is created by the store


@pytest.fixture
def store(path: Path) -> Iterator[ExampleStore]:
    s = ExampleStore(path)
    yield s
    s.close()


def add(store: ExampleStore, *ids: str) -> list[int]:
    """Add examples with these ids (input ``text-<id>``); their seqs, in order."""
    return [store.add(i, f"text-{i}", None, 1.0)[0].seq for i in ids]


def update(n: int, loss: float = 1.0) -> UpdateRecord:
    return UpdateRecord(n, loss, 1e-3, 1000.0 + n, 5.0, 4, None)


def test_add_returns_the_stored_record(store: ExampleStore) -> None:
    record, created = store.add("a", "The capital of Mars is", " Olympus", 2.5)
    assert created
    assert (record.id, record.input, record.target, record.weight) == (
        "a",
        "The capital of Mars is",
        " Olympus",
        2.5,
    )
    assert record.status == "stored" and record.trained_count == 0
    assert record.created > 0
    assert store.get("a") == record
    assert store.get("missing") is None


def test_a_duplicate_id_is_a_retry_not_a_second_example(store: ExampleStore) -> None:
    first, created = store.add("a", "first", None, 1.0)
    again, created_again = store.add("a", "something else", "x", 9.0)
    assert created and not created_again
    assert again == first  # the original is kept, unchanged
    assert store.count() == 1
    (seq_b,) = add(store, "b")
    assert seq_b > first.seq


def test_status_goes_stored_then_trained_and_counts_each_update(store: ExampleStore) -> None:
    a, b = add(store, "a", "b")
    store.mark_trained([a])
    store.mark_trained([a, b])
    store.mark_trained([])  # nothing to do
    ra, rb = store.get("a"), store.get("b")
    assert ra is not None and rb is not None
    assert (ra.status, ra.trained_count) == ("trained", 2)
    assert (rb.status, rb.trained_count) == ("trained", 1)


def test_remove_is_soft_and_happens_once(store: ExampleStore) -> None:
    add(store, "a", "b")
    assert store.remove("a")
    assert not store.remove("a")  # already removed
    assert not store.remove("missing")
    removed = store.get("a")
    assert removed is not None and removed.status == "removed"  # still on disk
    assert store.count() == 1
    assert [r.id for r in store.examples_after(0)] == ["b"]
    assert [r.id for r in store.latest(10)] == ["b"]
    assert [r.id for r in store.latest(10, include_removed=True)] == ["a", "b"]


def test_removed_then_trained_stays_removed(store: ExampleStore) -> None:
    """A batch composed before the removal may still train on it; the removal wins."""
    (a,) = add(store, "a")
    store.remove("a")
    store.mark_trained([a])
    record = store.get("a")
    assert record is not None
    assert record.status == "removed" and record.trained_count == 1


def test_trained_then_removed_is_removed(store: ExampleStore) -> None:
    (a,) = add(store, "a")
    store.mark_trained([a])
    assert store.remove("a")
    record = store.get("a")
    assert record is not None and record.status == "removed"


def test_examples_after_is_live_and_oldest_first(store: ExampleStore) -> None:
    seqs = add(store, "a", "b", "c", "d")
    store.remove("c")
    assert [r.id for r in store.examples_after(0)] == ["a", "b", "d"]
    assert [r.id for r in store.examples_after(seqs[1])] == ["d"]
    assert store.examples_after(seqs[-1]) == []


def test_latest_up_to_seq(store: ExampleStore) -> None:
    seqs = dict(zip("abcdef", add(store, *"abcdef"), strict=True))
    store.remove("b")
    assert [r.id for r in store.latest(3)] == ["d", "e", "f"]
    assert [r.id for r in store.latest(3, up_to_seq=seqs["d"])] == ["a", "c", "d"]
    assert [r.id for r in store.latest(2, up_to_seq=seqs["d"])] == ["c", "d"]
    assert [r.id for r in store.latest(3, up_to_seq=seqs["d"], include_removed=True)] == [
        "b",
        "c",
        "d",
    ]
    assert store.latest(3, up_to_seq=0) == []
    assert [r.id for r in store.latest(100)] == ["a", "c", "d", "e", "f"]


def test_updates_are_logged_in_order_and_rewritten_by_number(store: ExampleStore) -> None:
    store.add_updates([update(2), update(1)])
    store.add_updates([])
    assert [u.n for u in store.updates()] == [1, 2]
    store.add_updates([update(2, loss=0.5)])  # a replayed update replaces its record
    assert [(u.n, u.loss) for u in store.updates()] == [(1, 1.0), (2, 0.5)]
    assert store.updates()[0] == update(1)


def test_truncate_updates_forgets_those_past_a_checkpoint(store: ExampleStore) -> None:
    store.add_updates([update(n) for n in range(1, 6)])
    store.truncate_updates(3)
    assert [u.n for u in store.updates()] == [1, 2, 3]
    store.truncate_updates(10)  # nothing past 10
    assert [u.n for u in store.updates()] == [1, 2, 3]
    store.add_updates([update(4, loss=0.25)])  # training resumes from the checkpoint
    assert [(u.n, u.loss) for u in store.updates()][-1] == (4, 0.25)
    store.truncate_updates(0)
    assert store.updates() == []


def test_an_added_example_is_committed_before_add_returns(path: Path) -> None:
    store = ExampleStore(path)
    try:
        add(store, "a")
        other = sqlite3.connect(path)  # another process's view, while the store is open
        try:
            assert other.execute("SELECT id FROM examples").fetchall() == [("a",)]
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        finally:
            other.close()
    finally:
        store.close()


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
def test_reopen_after_close_keeps_everything(
    path: Path, synchronous: Literal["FULL", "NORMAL"]
) -> None:
    store = ExampleStore(path, synchronous=synchronous)
    a, _b = add(store, "a", "b")
    store.mark_trained([a])
    store.remove("b")
    store.add_updates([update(1)])
    before = store.latest(10, include_removed=True)
    store.close()
    assert not path.with_name(path.name + "-wal").exists()  # checkpointed into the main file

    reopened = ExampleStore(path, synchronous=synchronous)
    try:
        assert reopened.latest(10, include_removed=True) == before
        assert reopened.count() == 1
        assert reopened.updates() == [update(1)]
        (c,) = add(reopened, "c")
        assert c > max(r.seq for r in before)  # seqs are never reused
        assert reopened.add("a", "again", None, 1.0)[1] is False  # ids survive a reopen
    finally:
        reopened.close()


def test_a_store_that_cannot_be_opened_says_where(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(StoreError, match=r"cannot open the session store .*a-folder"):
        ExampleStore(folder)


def test_a_session_from_before_chat_and_methods_opens_and_gains_both(path: Path) -> None:
    # The examples table as the first sessions wrote it: no messages, no method column.
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE examples (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
        "input TEXT NOT NULL, target TEXT, weight REAL NOT NULL, created REAL NOT NULL, "
        "status TEXT NOT NULL DEFAULT 'stored', trained_count INTEGER NOT NULL DEFAULT 0)"
    )
    db.execute(
        "INSERT INTO examples (id, input, target, weight, created) VALUES ('old', 'q', ' a', 2, 1)"
    )
    db.commit()
    db.close()
    store = ExampleStore(path)
    try:
        old = store.get("old")
        assert old is not None and (old.input, old.weight, old.messages, old.method) == (
            "q",
            2.0,
            None,
            None,
        )
        turns = [{"role": "user", "content": "Rate: fine"}]
        new, _ = store.add("new", "Rate: fine", " 4", 1.0, turns, "finetune")
        assert store.get("new") == new
        assert (new.messages, new.method) == (tuple(turns), "finetune")
    finally:
        store.close()
