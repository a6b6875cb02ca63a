"""kill -9 during a labeling session loses no acknowledged answer, and resume hands the learner
every answered example (as the learner's own intake is tested in tests/learner)."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest

from tests.kill_helpers import kill_child

ROOT = Path(__file__).resolve().parents[2]

_CHILD = r"""
import sys
from tests.labeling.helpers import make_learner
from workbench.labeling import LabelingSession
learner = make_learner(sys.argv[1], update_frequency=3, enabled=True)
texts = [f"review number {i}" for i in range(400)]
s = LabelingSession(learner, texts, ["positive", "negative", "neutral"], order="random", seed=int(sys.argv[2]))
print("ready", s.reconciled, flush=True)
while (x := s.next()) is not None:
    out = s.answer(x.item_id, ["positive", "negative", "neutral"][hash(x.text) % 3])
    print(out["n"], x.item_id, flush=True)
"""

_RESUME = r"""
import sys
from tests.labeling.helpers import make_learner
from workbench.labeling import LabelingSession
learner = make_learner(sys.argv[1])
LabelingSession(learner, None, None).close()
learner.close(checkpoint=False)
"""


def _ready(stdout: IO[str]) -> None:
    assert stdout.readline().startswith("ready")


@pytest.mark.slow
def test_kill_during_labeling_loses_no_acknowledged_answer(tmp_path: Path) -> None:
    acked: dict[int, str] = {}
    rnd = random.Random(0)
    for run in range(6):
        out = kill_child(_CHILD, [str(tmp_path), str(run)], _ready, rnd.uniform(0.2, 0.8))
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit():
                acked[int(parts[0])] = parts[1]
    assert len(acked) > 20
    db = sqlite3.connect(tmp_path / "examples.sqlite")
    rows = dict(db.execute("SELECT n, item_id FROM label_answers WHERE undone = 0").fetchall())
    assert all(rows.get(n) == item for n, item in acked.items())
    # one live answer per item: a killed run never left a duplicate behind
    items = [item for item in rows.values()]
    assert len(items) == len(set(items))
    # after a clean resume, every answer's example is in the learner's log
    done = subprocess.run(
        [sys.executable, "-c", _RESUME, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    ids = {r[0] for r in db.execute("SELECT example_id FROM label_answers WHERE undone = 0")}
    stored = {r[0] for r in db.execute("SELECT id FROM examples")}
    assert ids <= stored
    assert (
        db.execute("SELECT COUNT(*) FROM label_answers WHERE example_added = 0").fetchone()[0] == 0
    )
