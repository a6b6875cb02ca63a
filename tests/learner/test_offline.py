"""learner.train_offline: a torchrun run of the learner's weights, streamed, cancelled, adopted.

The runs are real (torchrun, gloo, the tiny model, a few steps): about 10 s each on two cores,
most of it starting Python and torch in the processes. References are real too: the exported
SafeTensors read with ``load_model``, and a second learner that loads the export and is taught
the same later examples.

Measured (load average 4.6-5.7 on 2 cores, tiny model, 2 processes, 20 steps, the plot polling
every 0.25 s as in the Workbench): a step reached the plot 120-140 ms after rank 0 wrote it
(median; max 253 ms), the reader thread saw it within 4 ms; cancel ended torchrun and both
workers in 0.4-0.5 s; from rank 0's ``done`` to ``adopted`` (process exit, sha256, load, two
replay updates) 1.4-2.1 s.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.learner.helpers import make_learner, weights_of
from workbench.formats import load_model
from workbench.learner import LearnerError, OnlineLearner, TrainingExample
from workbench.train.launch import _alive, _tree

# Deterministic updates to compare against: no replay draw, plain optimizer steps, one thread.
# update_method and compute_dtype pinned: "auto" of either depends on whether the weights came
# from a file, which loading the export (the reference) and adopting it (kept) answer apart
SETTINGS: dict[str, Any] = dict(
    update_frequency=2,
    replay_fraction=0.0,
    update_method="finetune",
    compute_dtype="float32",
    train_threads=1,
)


@pytest.fixture
def learner(tmp_path: Path) -> Iterator[OnlineLearner]:
    """The learner most of these tests drive, in ``tmp_path / "s"``; closed without a checkpoint."""
    learner = make_learner(tmp_path / "s", **SETTINGS)
    yield learner
    learner.close(checkpoint=False)


def examples(n: int, seed: int, prefix: str) -> list[TrainingExample]:
    rnd = random.Random(seed)

    def text(k: int) -> str:
        return "".join(rnd.choice("abcdefgh ") for _ in range(k))

    return [
        TrainingExample(
            f"{prefix}{i} {text(rnd.randint(3, 20))}",
            f" {text(rnd.randint(1, 8))}",
            weight=rnd.choice([0.5, 1.0, 3.0]),
        )
        for i in range(n)
    ]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []


def exported(job_output: str | Path) -> dict[str, torch.Tensor]:
    model, _ = load_model(job_output)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def reference(tmp: Path, export: str | Path, late: list[TrainingExample]) -> dict[str, Any]:
    """A fresh learner that loads the export and is taught ``late``: what adoption + replay
    must equal (its optimizer is fresh too)."""
    ref = make_learner(tmp, **SETTINGS)
    try:
        ref.load_weights(export)
        for e in late:
            ref.add_example(TrainingExample(e.input, e.target, e.weight))
        assert ref.wait_idle(60)
        if ref.get_stats()["pending_examples"]:
            ref.force_update()
        return weights_of(ref)
    finally:
        ref.close(checkpoint=False)


def teach(learner: OnlineLearner, items: list[TrainingExample]) -> None:
    for e in items:
        learner.add_example(e)
    assert learner.wait_idle(60)


def test_bad_arguments_raise_with_the_fix(learner: OnlineLearner) -> None:
    for kwargs, match in [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"steps": 3, "epochs": 1.0}, "steps or epochs, not both"),
        ({"epochs": float("nan")}, "epochs must be a finite number"),
        ({"nproc": 0}, "nproc must be a positive integer"),
        ({"cutoff": -1}, "cutoff must be a positive integer"),
        ({"nproc": 4, "global_batch": 2}, "global_batch >= 4 or fewer processes"),
    ]:
        with pytest.raises(LearnerError, match=match):
            learner.train_offline(**kwargs)
    with pytest.raises(LearnerError, match="no examples up to the cutoff 0"):
        learner.train_offline(steps=2)
    assert list((learner.session_dir / "offline").iterdir()) == []  # no half-made run
    teach(learner, examples(2, 0, "q"))
    with pytest.raises(LearnerError, match=r"unknown key.*'nope'"):
        learner.train_offline(steps=2, nope=1)
    assert learner.offline_job is None


@pytest.mark.slow
def test_explicit_adoption_takes_the_export_bit_exactly_then_replays(
    tmp_path: Path, learner: OnlineLearner
) -> None:
    teach(learner, examples(6, 1, "q"))  # three online updates: the optimizer has state
    assert learner.get_stats()["total_updates"] == 3
    learner.disable()
    job = learner.train_offline(steps=3, global_batch=4, adopt=False)
    late = examples(3, 2, "late")
    teach(learner, late)  # logged during the run, after its cutoff
    before = weights_of(learner)
    assert job.wait(180) == {"output": str(job.output)}
    assert job.state == "finished" and job.cutoff == 6 and job.examples == 6
    assert_same_weights(weights_of(learner), before)  # nothing adopted yet

    info = job.adopt()
    assert job.state == "adopted" and info["cutoff"] == 6
    assert (info["replayed"], info["replay_updates"], info["at_update"]) == (3, 0, 3)
    export = exported(job.output or "")
    assert_same_weights(weights_of(learner), export)
    assert any(not torch.equal(export[k], before[k]) for k in export)  # it did train
    assert learner.get_stats()["pending_examples"] == 3  # re-queued: learning is off
    with pytest.raises(LearnerError, match="this run is adopted"):
        job.adopt()

    learner.enable()  # one update of two, then the third by hand
    assert learner.wait_idle(60)
    learner.force_update()
    assert learner.get_stats()["pending_examples"] == 0
    assert_same_weights(weights_of(learner), reference(tmp_path / "ref", job.output, late))


@pytest.mark.slow
def test_automatic_adoption_replays_and_the_plot_streams_the_run(tmp_path: Path) -> None:
    from workbench.widgets import LiveLossPanel
    from workbench.widgets._common import UI_LOCK

    learner = make_learner(tmp_path / "s", **SETTINGS)
    panel = LiveLossPanel(learner, auto_refresh=True, interval=0.2)
    seen: dict[int, float] = {}  # offline step -> when the plot first showed it
    stop = threading.Event()

    def watch_plot() -> None:
        while not stop.is_set():
            with UI_LOCK:  # the panel's poller replaces the arrays under it
                data = panel.figure.data
                xs = [] if len(data) < 3 or data[2].x is None else list(data[2].x)
            now = time.time()
            for x in xs:
                seen.setdefault(int(x), now)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch_plot, daemon=True)
    try:
        teach(learner, examples(6, 3, "q"))
        job = learner.train_offline(steps=6, global_batch=4, nproc=2)
        assert learner.offline_job is job
        late = examples(3, 4, "late")
        teach(learner, late)  # the live learner trains two of them while the run goes on
        assert learner.get_stats()["total_updates"] == 4
        watcher.start()
        info = job.wait(240)
        assert job.state == "adopted", job.error
        assert (info["cutoff"], info["replayed"], info["replay_updates"]) == (6, 3, 2)
        assert info["at_update"] == 4 and info["updates"] == 6
        assert learner.get_stats()["pending_examples"] == 0
        late_records = [r for r in learner.recent_examples(3)]
        assert [r.seq for r in late_records] == [7, 8, 9]
        assert [r.trained_count for r in late_records] == [2, 2, 1]  # online, then replayed
        assert_same_weights(weights_of(learner), reference(tmp_path / "ref", job.output, late))

        # The second series: every step, each within 1 s of rank 0 writing it.
        deadline = time.monotonic() + 5
        while len(seen) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        steps = [m for m in job.metrics if m["event"] == "step"]
        assert [m["step"] for m in steps] == list(range(1, 7)) and sorted(seen) == [
            1,
            2,
            3,
            4,
            5,
            6,
        ]
        lags = [seen[m["step"]] - m["time"] for m in steps]
        assert max(lags) <= 1.0, lags
        assert list(panel.figure.data[2].y) == [m["loss"] for m in steps]
        deadline = time.monotonic() + 5
        while not panel.figure.layout.shapes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert panel.figure.layout.shapes[0].x0 == 4  # adopted after live update 4
        assert "offline step 6" in panel.summary.value
    finally:
        stop.set()
        panel.close()
        learner.close(checkpoint=False)


@pytest.mark.slow
def test_cancel_ends_every_process_and_the_learner_keeps_its_weights(
    learner: OnlineLearner,
) -> None:
    teach(learner, examples(6, 5, "q"))
    before, version = weights_of(learner), learner.get_stats()["version"]
    job = learner.train_offline(steps=100_000, global_batch=4, nproc=2)
    deadline = time.monotonic() + 180
    while not any(m["event"] == "step" for m in job.metrics):
        assert time.monotonic() < deadline and job.state == "running", job.error
        time.sleep(0.05)
    with pytest.raises(LearnerError, match="already running"):
        learner.train_offline(steps=1)
    tree = _tree(job.pid)
    assert len(tree) >= 3  # torchrun and two workers
    t0 = time.monotonic()
    assert job.cancel()
    elapsed = time.monotonic() - t0
    assert elapsed <= 10, elapsed
    assert not any(_alive(p) for p in tree)
    assert job.state == "cancelled"
    with pytest.raises(LearnerError, match="cancelled"):
        job.wait(5)
    assert_same_weights(weights_of(learner), before)
    assert learner.get_stats()["version"] == version
    learner.force_update()  # the learner goes on as before

    # Closing the learner ends a run it started.
    second = learner.train_offline(epochs=50_000, global_batch=4)
    assert second.total_steps == 50_000 * 6 // 4  # epochs over the 6 examples stored
    deadline = time.monotonic() + 60
    while len(tree := _tree(second.pid)) < 2:  # torchrun has started its worker
        assert time.monotonic() < deadline
        time.sleep(0.05)
    learner.close(checkpoint=False)
    assert second.state == "cancelled"
    assert not any(_alive(p) for p in tree)


@pytest.mark.slow
def test_a_crashed_run_says_so_and_leaves_the_learner_untouched(learner: OnlineLearner) -> None:
    teach(learner, examples(6, 6, "q"))
    before = weights_of(learner)
    job = learner.train_offline(steps=100_000, global_batch=4, nproc=2)
    deadline = time.monotonic() + 180
    while not any(m["event"] == "step" for m in job.metrics):
        assert time.monotonic() < deadline and job.state == "running", job.error
        time.sleep(0.05)
    tree = _tree(job.pid)
    os.kill(tree[-1], signal.SIGKILL)  # a worker dies (the OOM killer, a lost node)
    with pytest.raises(LearnerError, match=r"the run failed \(exit code [1-9]"):
        job.wait(60)
    assert job.state == "failed" and "the learner kept its weights" in (job.error or "")
    assert job.summary().startswith("failed: the run failed (exit code")
    assert job.adoption is None
    assert_same_weights(weights_of(learner), before)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in tree)


def test_a_refused_adoption_leaves_the_learner_as_it_was(
    tmp_path: Path, learner: OnlineLearner
) -> None:
    from workbench.learner._commands import AdoptOffline
    from workbench.learner._offline_job import _check_export

    teach(learner, examples(5, 7, "q"))  # two updates, one example pending
    path = learner.save_weights(tmp_path / "run" / "model.safetensors", "safetensors")
    manifest = tmp_path / "run" / "manifest.json"
    manifest.write_text('{"sha256": "00", "cutoff": 5}')
    with pytest.raises(LearnerError, match="does not match its manifest's sha256"):
        _check_export(path, tmp_path / "run", 5)

    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a torn file: the load must refuse it
    before, stats = weights_of(learner), learner.get_stats()
    assert learner._worker._trained_seq == 4
    with pytest.raises(ValueError):  # WeightLoadError
        learner._worker.call(AdoptOffline(path, 3, 4))  # what an OfflineJob sends
    assert_same_weights(weights_of(learner), before)
    after = learner.get_stats()
    assert after["pending_examples"] == stats["pending_examples"] == 1
    assert after["version"] == stats["version"]
    assert learner._worker._trained_seq == 4  # the cutoff (3) was not applied
    learner.force_update()  # the pending one, as before
    assert learner.get_stats()["pending_examples"] == 0
