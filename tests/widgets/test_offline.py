"""Offline fine-tune panel and the live loss plot's second series, driven with a stand-in run.

The stand-in learner records what the panel asks for and hands back a job whose metrics the
test writes, so these run in well under a second; tests/learner/test_offline.py runs real
torchrun jobs (and the plot's 1 s latency) against the real learner.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

from workbench.widgets import LiveLossPanel, OfflinePanel, Workbench

from workbench.learner import LearnerError, LearningConfig, OnlineLearner, UpdateRecord


class FakeJob:
    """What the panels read of an ``OfflineJob``: state, progress, metrics by cursor, cancel."""

    def __init__(self, steps: int) -> None:
        self.state = "running"
        self.total_steps = steps
        self.events: list[dict[str, Any]] = []
        self.adoption: dict[str, Any] | None = None
        self.cancelled = threading.Event()
        self.examples, self.cutoff, self.pid, self.run_dir = 5, 5, 12345, Path("/runs/r1")

    def metrics_since(self, cursor: int = 0) -> tuple[list[dict[str, Any]], int]:
        return list(self.events[cursor:]), len(self.events)

    def step(self, n: int, loss: float) -> None:
        self.events.append({"event": "step", "step": n, "loss": loss, "time": 0.0})

    def progress(self) -> dict[str, Any]:
        steps = [e for e in self.events if e["event"] == "step"]
        return {
            "state": self.state,
            "step": steps[-1]["step"] if steps else 0,
            "steps": self.total_steps,
            "loss": steps[-1]["loss"] if steps else None,
            "error": None,
            "adoption": self.adoption,
        }

    def summary(self) -> str:
        return f"{self.state} · step {self.progress()['step']}/{self.total_steps}"

    def adopt(self) -> dict[str, Any]:
        self.state, self.adoption = "adopted", {"at_update": 7, "replayed": 2}
        return dict(self.adoption)

    def cancel(self, timeout: float = 10.0) -> bool:
        self.cancelled.set()
        self.state = "cancelled"
        return True


class FakeLearner:
    """Records ``train_offline`` calls; ``fail`` makes the next one raise."""

    def __init__(self) -> None:
        self.config = LearningConfig(learning_rate=2e-4)
        self.offline_job: FakeJob | None = None
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.fail: str | None = None
        self.log: list[UpdateRecord] = []

    def train_offline(self, *args: Any, **kwargs: Any) -> FakeJob:
        self.calls.append((args, kwargs))
        if self.fail:
            raise LearnerError(self.fail)
        self.offline_job = FakeJob(args[0] if args else kwargs["steps"])
        return self.offline_job

    def metrics_since(self, cursor: int = 0) -> tuple[list[UpdateRecord], int]:
        return self.log[cursor:], len(self.log)

    def get_stats(self) -> dict[str, Any]:
        return {"state": "idle"}


def test_start_sends_the_settings_and_the_panel_follows_the_run() -> None:
    fake = FakeLearner()
    panel = OfflinePanel(fake, auto_refresh=False)
    assert panel.learning_rate.value == 2e-4  # the learner's rate to start with
    assert "no offline run yet" in panel.summary.value and panel.cancel.disabled
    nproc = min(2, panel.max_nproc)
    panel.nproc.value, panel.steps.value, panel.learning_rate.value = nproc, 37, 1e-3
    panel.adopt.value = False
    panel.start.click()
    assert panel.wait(10)
    assert fake.calls == [
        ((37,), {"nproc": nproc, "learning_rate": 1e-3, "global_batch": 8, "adopt": False})
    ]
    assert "started: 5 examples up to #5" in panel.status.text
    job = fake.offline_job
    assert job is not None
    assert panel.start.disabled and not panel.cancel.disabled
    for n in range(1, 11):
        job.step(n, 3.0 - n / 10)
    progress = panel.refresh()
    assert progress is not None and progress["step"] == 10
    assert (panel.progress.value, panel.progress.max) == (10, 37)
    assert "running · step 10/37" in panel.summary.value

    panel.cancel.click()
    assert panel.wait(10) and job.cancelled.is_set()
    assert "no process of the run is left" in panel.status.text
    assert not panel.start.disabled and panel.cancel.disabled
    panel.close()


def test_a_finished_run_is_adopted_from_the_panel() -> None:
    fake = FakeLearner()
    panel = OfflinePanel(fake, auto_refresh=False)
    panel.start.click()
    assert panel.wait(10) and fake.offline_job is not None
    assert panel.adopt_now.disabled  # running: nothing to adopt yet
    fake.offline_job.state = "finished"
    panel.refresh()
    assert not panel.adopt_now.disabled and not panel.start.disabled
    panel.adopt_now.click()
    assert panel.wait(10) and fake.offline_job.state == "adopted"
    assert panel.status.kind == "ok" and panel.status.text.startswith("adopted")
    assert panel.adopt_now.disabled and panel.progress.bar_style == "success"
    panel.close()


def test_out_of_range_settings_and_a_refused_start_are_shown() -> None:
    fake = FakeLearner()
    panel = OfflinePanel(fake, auto_refresh=False)
    panel.steps.value = 0
    panel.start.click()
    assert panel.status.kind == "error" and "steps must be between 1 and" in panel.status.text
    panel.steps.value, panel.nproc.value = 5, panel.max_nproc + 1
    panel.start.click()
    assert "processes must be between 1 and" in panel.status.text
    assert fake.calls == []

    panel.nproc.value = 1
    fake.fail = "no examples up to the cutoff 0 to train on: add (input, target) examples first"
    panel.start.click()
    assert panel.wait(10)
    assert panel.status.kind == "error" and "add (input, target) examples" in panel.status.text
    assert not panel.start.disabled  # a refused start can be tried again
    panel.close()


def test_the_live_loss_plot_draws_the_run_as_a_second_series() -> None:
    fake = FakeLearner()
    plot = LiveLossPanel(fake, auto_refresh=False)
    assert plot.refresh() == 0 and len(plot.figure.data) == 2  # no run: no third trace
    fake.log.extend(UpdateRecord(n, 2.0, 1e-3, 0.0, 1.0, 2, None) for n in (1, 2))
    job = fake.offline_job = FakeJob(20)
    rnd = random.Random(0)
    losses = [rnd.uniform(0.5, 4.0) for _ in range(7)]
    for n, loss in enumerate(losses[:4], 1):
        job.step(n, loss)
    job.events.append({"event": "checkpoint", "step": 4})  # not a point
    assert plot.refresh() == 2 + 4
    trace = plot.figure.data[2]
    assert trace.xaxis == "x2" and plot.figure.layout.xaxis2.overlaying == "x"
    assert list(trace.x) == [1, 2, 3, 4] and list(trace.y) == losses[:4]
    assert list(plot.figure.data[0].x) == [1, 2]  # the live series is untouched
    for n, loss in enumerate(losses[4:], 5):
        job.step(n, loss)
    assert plot.refresh() == 3  # by cursor: only the new steps
    assert list(plot.figure.data[2].y) == losses
    assert f"offline step 7 · loss {losses[-1]:.4g}" in plot.summary.value
    assert not plot.figure.layout.shapes

    job.state, job.adoption = "adopted", {"at_update": 2}
    plot.refresh()
    assert [s.x0 for s in plot.figure.layout.shapes] == [2]
    plot.refresh()
    assert len(plot.figure.layout.shapes) == 1  # marked once

    second = fake.offline_job = FakeJob(5)  # a new run starts a new series
    second.step(1, 9.0)
    plot.refresh()
    assert list(plot.figure.data[2].x) == [1] and list(plot.figure.data[2].y) == [9.0]
    assert len(plot.figure.data) == 3
    plot.close()


def test_the_workbench_shows_the_offline_panel(learner: OnlineLearner) -> None:
    wb = Workbench(learner, auto_refresh=False)
    assert wb.offline in wb.panels
    wb.refresh()
    assert "no offline run yet" in wb.offline.summary.value
    wb.close()


def test_the_panel_stops_polling_when_the_learner_closes(learner: OnlineLearner) -> None:
    panel = OfflinePanel(learner, interval=0.2)
    assert panel.poller.running
    learner.close(checkpoint=False)
    deadline = time.monotonic() + 5
    while panel.poller.running and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not panel.poller.running and panel.status.text == "learner closed"
    panel.close()
