"""The panel runtime: one closed-learner check for every poller, errors kept where panels read them."""

from __future__ import annotations

import time
from typing import Any

import pytest
from workbench.widgets import ExamplesPanel, LearningPanel, LiveLossPanel, Workbench
from workbench.widgets._runtime import PanelRuntime

from workbench.learner import OnlineLearner


class StatsOnly:
    """Just enough learner for the runtime: it asks ``get_stats`` and nothing else."""

    def __init__(self) -> None:
        self.state = "idle"

    def get_stats(self) -> dict[str, Any]:
        return {"state": self.state}


def wait_until_stopped(runtime: PanelRuntime, timeout: float = 5.0) -> None:
    assert runtime.poller is not None
    deadline = time.monotonic() + timeout
    while runtime.poller.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not runtime.poller.running


def test_polling_refreshes_until_the_learner_closes_then_says_so() -> None:
    fake = StatsOnly()
    runtime = PanelRuntime(fake, "t")
    refreshed: list[float] = []
    poller = runtime.poll(lambda: refreshed.append(time.monotonic()), 0.2, start=False)
    assert poller is runtime.poller and not poller.running
    poller.interval = 0.01
    poller.start()
    deadline = time.monotonic() + 5
    while len(refreshed) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    fake.state = "closed"
    wait_until_stopped(runtime)
    assert len(refreshed) >= 3
    assert runtime.status.kind == "info" and runtime.status.text == "learner closed"


def test_a_failed_task_lands_in_the_runtime_and_the_panel_reads_it() -> None:
    runtime = PanelRuntime(StatsOnly(), "t")
    runtime.submit(lambda: 1 / 0, what="divide")
    assert runtime.wait(10)
    assert runtime.status.kind == "error" and "ZeroDivisionError" in runtime.status.text
    assert runtime.last_traceback is not None and "ZeroDivisionError" in runtime.last_traceback


@pytest.mark.parametrize("panel_type", [ExamplesPanel, LearningPanel, LiveLossPanel, Workbench])
def test_every_polling_panel_stops_when_the_learner_closes(
    learner: OnlineLearner, panel_type: Any
) -> None:
    panel = panel_type(learner, interval=0.2)
    assert panel.poller.running and panel.poller is panel.runtime.poller
    learner.close(checkpoint=False)
    wait_until_stopped(panel.runtime)
    assert panel.status.text == "learner closed" and panel.status is panel.runtime.status
    panel.close()


def test_a_guarded_callback_error_is_kept_for_the_panel(learner: OnlineLearner) -> None:
    panel = ExamplesPanel(learner, auto_refresh=False)
    assert panel.last_traceback is None
    learner.close(checkpoint=False)
    panel.input.value = "too late"
    panel.submit.click()
    assert panel.status.kind == "error" and "closed" in panel.status.text
    assert panel.last_traceback is not None and "LearnerError" in panel.last_traceback
    panel.close()
