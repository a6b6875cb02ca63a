"""Workbench: the panels together, one refresh for all, background polling, errors shown."""

from __future__ import annotations

import html
import time
from pathlib import Path

import plotly.graph_objects as go
from workbench.widgets import (
    ChatPanel,
    ExamplesPanel,
    LearningPanel,
    LiveLossPanel,
    WeightsPanel,
    Workbench,
)

from tests.learner.helpers import make_learner
from workbench.learner import OnlineLearner, TrainingExample

from .conftest import UPDATE_FREQUENCY


def test_layout_holds_every_panel(learner: OnlineLearner) -> None:
    wb = Workbench(learner, auto_refresh=False)
    assert [wb.tabs.get_title(i) for i in range(3)] == ["Examples", "Chat", "Weights"]
    assert isinstance(wb.examples, ExamplesPanel) and isinstance(wb.chat, ChatPanel)
    assert isinstance(wb.weights, WeightsPanel) and isinstance(wb.learning, LearningPanel)
    assert isinstance(wb.live_loss, LiveLossPanel)
    assert "llama" in wb.header.value and "1.6M" in wb.header.value
    # the inference path, its reason on hover
    info = learner.describe()
    assert f"{info['inference']} inference</span>" in wb.header.value
    assert f"title='{html.escape(info['inference_detail'], quote=True)}'" in wb.header.value
    wb.close()


def test_teach_force_and_watch_the_loss(learner: OnlineLearner) -> None:
    wb = Workbench(learner, auto_refresh=False)
    wb.examples.input.value = "The sky on Mars is"
    wb.examples.target.value = " butterscotch"
    wb.examples.submit.click()
    wb.learning.force.click()
    assert wb.wait(60)
    wb.refresh()
    stats = learner.get_stats()
    assert stats["total_examples"] == 1 and stats["total_updates"] == 1
    assert len(wb.live_loss.figure.data[0].x) == 1
    assert list(wb.live_loss.figure.data[0].y) == [wb.learning.last_loss]
    assert "trained" in wb.examples.table.value
    assert "<td>1</td>" in wb.weights.summary.value  # the summary follows the new version
    fig = wb.static_figure()
    assert type(fig) is go.Figure and len(fig.data[0].x) == 1
    wb.close()


def test_background_learning_shows_up_without_a_manual_refresh(tmp_path: Path) -> None:
    learner = make_learner(tmp_path / "s", update_frequency=1)
    try:
        wb = Workbench(learner, interval=0.2)
        assert wb.poller.running
        for text in ("a", "b", "c"):
            learner.add_example(TrainingExample(f"example {text}"))
        deadline = time.monotonic() + 30
        while len(wb.live_loss.figure.data[0].x) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(wb.live_loss.figure.data[0].x) == [1, 2, 3]
        wb.close()
        time.sleep(0.3)
        assert not wb.poller.running
    finally:
        learner.close(checkpoint=False)


def test_polling_stops_when_the_learner_closes(tmp_path: Path) -> None:
    learner = make_learner(tmp_path / "s", update_frequency=UPDATE_FREQUENCY)
    wb = Workbench(learner, interval=0.2)
    learner.close(checkpoint=False)
    deadline = time.monotonic() + 5
    while wb.poller.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not wb.poller.running
    assert "closed" in wb.status.text
    wb.examples.input.value = "too late"
    wb.examples.submit.click()  # shown, not raised
    assert wb.examples.status.kind == "error" and "closed" in wb.examples.status.text
