"""Configuration, snapshots and refusals: every bad input is one TrainError that says the fix."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch

from tests.train.train_helpers import config, write_examples
from workbench.store import ExampleStore
from workbench.train import TrainConfig, TrainError, read_examples, run, snapshot_store
from workbench.train import worker as W
from workbench.train.config import parse_flags
from workbench.train.data import local_slice, step_indices


def test_toml_and_flags(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(
        '[train]\nmodel = "preset:tiny-llama"\ndata = "ex.jsonl"\nout = "runs/a"\nsteps = 7\n'
    )
    cfg = parse_flags(["--config", str(tmp_path / "run.toml"), "--global-batch", "3"])
    assert cfg.steps == 7 and cfg.global_batch == 3
    assert cfg.data == str(tmp_path / "ex.jsonl")  # relative to the file
    assert parse_flags(["--model", "m", "--data", "d", "--out", "o", "--no-resume"]).resume is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model = ", "not valid TOML"),
        ('model = "m"\ndata = "d"\nout = "o"\nstepz = 3\n', "unknown key.*'stepz'.*known keys"),
        ('model = "m"\ndata = "d"\nout = "o"\nsteps = 0\n', "steps must be a positive integer"),
        ('model = "m"\ndata = "d"\nout = "o"\nstrategy = "zero3"\n', "strategy must be one of"),
        ('model = "m"\n', "give model, data and out"),
    ],
)
def test_bad_toml_says_the_fix(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "run.toml").write_text(text)
    with pytest.raises(TrainError, match=message):
        TrainConfig.from_toml(tmp_path / "run.toml")


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="no configuration file"):
        TrainConfig.from_toml(tmp_path / "nope.toml")
    with pytest.raises(TrainError, match=r"no data at .*snapshot"):
        run(config(tmp_path / "missing.sqlite", tmp_path / "out"), stream=None)
    (tmp_path / "bad.jsonl").write_text('{"input": "a"}\n{"target": "b"}\n')
    with pytest.raises(TrainError, match="line 2"):
        read_examples(tmp_path / "bad.jsonl")


def _store(tmp_path: Path) -> ExampleStore:
    store = ExampleStore(tmp_path / "session" / "examples.sqlite")
    for i in range(1, 6):
        store.add(f"e{i}", f"question {i}", f"answer {i}", float(i))
    store.add("chat", "hi", "there", 1.0, messages=[{"role": "user", "content": "hi"}])
    store.remove("e2")
    return store


def test_snapshot_keeps_live_examples_up_to_the_cutoff(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(TrainError, match=r"live session store.*snapshot_store"):
        read_examples(store.path)
    snap = snapshot_store(tmp_path / "session", tmp_path / "snap.sqlite", cutoff=4)
    store.add("e7", "late", "example", 1.0)  # the learner goes on writing
    examples, meta = read_examples(snap.path)
    assert [e.seq for e in examples] == [1, 3, 4] and snap.cutoff == 4
    assert [e.weight for e in examples] == [1.0, 3.0, 4.0]
    assert meta["cutoff"] == "4" and snap.examples == 3
    everything = snapshot_store(store.path, tmp_path / "all.sqlite")
    assert everything.cutoff == 7 and everything.skipped_chat == 1
    assert [e.seq for e in read_examples(everything.path)[0]] == [1, 3, 4, 5, 7]
    db = sqlite3.connect(snap.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
    db.close()
    store.close()


def test_batches_do_not_depend_on_the_world_size() -> None:
    batch = step_indices(11, 3, 5, seed=0)
    assert len(batch) == 5 and set(batch) <= set(range(11))
    assert local_slice(batch, 0, 2) + local_slice(batch, 1, 2) == batch
    assert [len(local_slice(batch, r, 3)) for r in range(3)] == [2, 2, 1]
    epoch = [i for s in range(11) for i in step_indices(11, s, 1, seed=0)]
    assert sorted(epoch) == list(range(11))  # one epoch is a permutation


@pytest.mark.slow
def test_refuses_what_cannot_resume(tmp_path: Path) -> None:
    data = write_examples(tmp_path / "ex.jsonl", n=4)
    first = config(data, tmp_path / "out", steps=2, global_batch=2, checkpoint_every=1)
    run(TrainConfig.from_dict({**first.to_dict(), "keep_checkpoints": 1}), stream=None)
    kept = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert kept == ["latest", "step-0000002"]  # the older one was pruned
    with pytest.raises(TrainError, match="global_batch=2, this run has global_batch=3"):
        run(config(data, tmp_path / "out", steps=3, global_batch=3), stream=None)
    with pytest.raises(TrainError, match="positive integer"):
        config(data, tmp_path / "out", steps=0)


def test_refuses_a_world_size_wider_than_the_batch(tmp_path: Path) -> None:
    data = write_examples(tmp_path / "ex.jsonl", n=4)
    too_wide = config(data, tmp_path / "wide", global_batch=2)
    with pytest.raises(TrainError, match="smaller than the world size 3"):
        W._run(too_wide, torch.device("cpu"), 0, 3, None)
