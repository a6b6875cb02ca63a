"""Sessions resume exactly; kill -9 never loses an acknowledged example or every checkpoint."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import IO

import pytest
import torch

from tests.kill_helpers import kill_child
from tests.learner.helpers import arithmetic_facts, make_learner, weights_of
from workbench.learner import TrainingExample


def _examples(n: int) -> list[TrainingExample]:
    facts = arithmetic_facts(n, seed=6)
    return [
        TrainingExample(q, a, weight=1.0 + (i % 3), id=f"ex-{i}") for i, (q, a) in enumerate(facts)
    ]


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    examples = _examples(40)
    cfg = dict(update_frequency=4, checkpoint_frequency=2, replay_fraction=0.5, keep_checkpoints=2)
    with make_learner(tmp_path / "straight", **cfg) as learner:
        for e in examples:
            learner.add_example(e)
        learner.wait_idle()
        assert learner.get_stats()["total_updates"] == 10
        want = weights_of(learner)

    session = tmp_path / "resumed"
    learner = make_learner(session, **cfg)
    for e in examples[:22]:
        learner.add_example(e)
    learner.wait_idle()
    assert learner.get_stats()["total_updates"] == 5
    learner.close(checkpoint=False)  # like a crash after update 5: the last checkpoint is update 4
    assert [c["updates"] for c in learner.list_checkpoints()] == [4, 2]

    learner = make_learner(session, seed=123, **cfg)  # the checkpoint, not this seed, decides
    stats = learner.get_stats()
    assert stats["total_examples"] == 22
    for e in examples[22:]:
        learner.add_example(e)
    learner.wait_idle()
    assert learner.get_stats()["total_updates"] == 10
    got = weights_of(learner)
    learner.close()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_reopening_restores_buffer_and_counters(tmp_path: Path) -> None:
    with make_learner(tmp_path, update_frequency=3, checkpoint_frequency=1) as learner:
        for e in _examples(9):
            learner.add_example(e)
        learner.wait_idle()
        before = learner.get_stats()
        losses = [r.loss for r in learner.metrics_since(0)[0]]
    with make_learner(tmp_path, update_frequency=3, checkpoint_frequency=1) as learner:
        after = learner.get_stats()
        assert [r.loss for r in learner.metrics_since(0)[0]] == losses
    for key in ("total_examples", "total_updates", "buffer_size", "average_loss"):
        assert after[key] == before[key], key


_INTAKE_CHILD = r"""
import sys
from workbench.learner import LearningConfig, OnlineLearner, TrainingExample
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer
session, start = sys.argv[1], int(sys.argv[2])
learner = OnlineLearner(Transformer(ModelConfig.preset("tiny-gpt2")), ByteTokenizer(),
                        LearningConfig(session_dir=session, enabled=False, checkpoint_frequency=None))
print("ready", flush=True)
i = start
while True:
    learner.add_example(TrainingExample(f"example {i}", " ok", id=f"id-{i}"))
    print(i, flush=True)
    i += 1
"""


def _ready(stdout: IO[str]) -> None:
    assert stdout.readline().strip() == "ready"


@pytest.mark.slow
def test_kill_during_intake_loses_no_acknowledged_example(tmp_path: Path) -> None:
    acked: list[int] = []
    rnd = random.Random(0)
    next_id = 0
    for _ in range(20):
        out = kill_child(
            _INTAKE_CHILD, [str(tmp_path), str(next_id)], _ready, rnd.uniform(0.01, 0.15)
        )
        acked.extend(int(line) for line in out.split() if line.isdigit())
        # The next run retries from the last acknowledged id + 1; an unacknowledged id may or
        # may not have been stored, and retrying it must not duplicate it.
        next_id = (acked[-1] + 1) if acked else 0
        next_id = max(0, next_id - 1)  # deliberately resend the last acknowledged one
    db = sqlite3.connect(tmp_path / "examples.sqlite")
    rows = db.execute("SELECT id, COUNT(*) FROM examples GROUP BY id").fetchall()
    counts = dict(rows)
    assert len(acked) > 100
    assert all(counts.get(f"id-{i}") == 1 for i in acked)
    assert all(c == 1 for c in counts.values())


_CKPT_CHILD = r"""
import sys
from workbench.learner import LearningConfig, OnlineLearner, TrainingExample
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer
session = sys.argv[1]
learner = OnlineLearner(Transformer(ModelConfig.preset("tiny-llama")), ByteTokenizer(),
                        LearningConfig(session_dir=session, update_frequency=1, batch_size=2,
                                       checkpoint_frequency=1, keep_checkpoints=2, learning_rate=1e-3))
learner.on_update(lambda _l, rec: print("update", rec.n, flush=True))
i = 0
while True:
    learner.add_example(TrainingExample(f"example {i}", " ok"))
    i += 1
    if learner.get_stats()["pending_examples"] > 4:
        learner.wait_idle()
"""


def _two_updates(stdout: IO[str]) -> None:
    # A checkpoint follows every update, and update n+1 starts only after checkpoint n is on
    # disk: once the child reports its second update of this run, it is killed at a random
    # moment of the steady train -> checkpoint -> train cycle.
    reported = 0
    while reported < 2:
        line = stdout.readline()
        assert line, "the child died before training"
        reported += line.startswith("update")


@pytest.mark.slow
def test_kill_during_checkpointing_always_leaves_a_verified_checkpoint(tmp_path: Path) -> None:
    from workbench.learner._checkpoints import latest_valid

    rnd = random.Random(1)
    for kill in range(20):
        kill_child(_CKPT_CHILD, [str(tmp_path)], _two_updates, rnd.uniform(0.0, 0.4))
        assert latest_valid(tmp_path) is not None, f"no verified checkpoint after kill {kill + 1}"
    assert list((tmp_path / "checkpoints").glob("ckpt-*.mwb"))
