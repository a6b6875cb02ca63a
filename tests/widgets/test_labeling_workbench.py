"""The Labeling tab in ``Workbench``: present only with a session, refreshed by its poller."""

from __future__ import annotations

from pathlib import Path

import pytest
from workbench.widgets import LabelingPanel, Workbench

from tests.learner.helpers import make_learner
from workbench.labeling import LabelingSession
from workbench.learner import OnlineLearner

LABELS = ["positive", "negative"]
TEXTS = [f"review {i}: {'good' if i % 2 else 'bad'} pills" for i in range(5)]


def test_no_session_no_labeling_tab(learner: OnlineLearner) -> None:
    wb = Workbench(learner, auto_refresh=False)
    try:
        assert wb.labeling is None
        assert "Labeling" not in [wb.tabs.get_title(i) for i in range(len(wb.tabs.children))]
        assert not any(isinstance(p, LabelingPanel) for p in wb.panels)
        assert len(wb.panels) == 7  # examples, chat, weights, watch, learning, loss, offline
    finally:
        wb.close()


def test_a_session_adds_a_labeling_tab_that_answers_and_refreshes(learner: OnlineLearner) -> None:
    learner.disable()  # the tiny model's updates would only slow this down
    session = LabelingSession(learner, TEXTS, LABELS, order="sequential")
    wb = Workbench(learner, auto_refresh=False, labeling=session)
    try:
        titles = [wb.tabs.get_title(i) for i in range(len(wb.tabs.children))]
        assert titles == ["Examples", "Chat", "Weights", "Watch", "Labeling"]
        assert isinstance(wb.labeling, LabelingPanel) and wb.tabs.children[4] is wb.labeling
        assert wb.labeling in wb.panels and wb.labeling.session is session
        assert not wb.labeling.poller.running  # the Workbench's poller refreshes it
        assert wb.wait(60)  # includes the panel's first item being scored
        first = wb.labeling.current
        assert first is not None and first.item_id == session.items[0].id
        wb.labeling.key_listener.press("2")
        assert wb.wait(60)
        assert [(a.item_id, a.label) for a in session.answers()] == [(first.item_id, "negative")]
        # An answer made elsewhere (an agent through MCP, a cell) shows up on the next refresh.
        session.answer(session.items[3].id, "positive", agent="agent")
        assert wb.labeling.progress.value == 1
        wb.refresh()
        assert wb.labeling.progress.value == 2
        assert "2 / 5" in wb.labeling.progress_text.value
        assert wb.labeling.history.value.count("<tr>") == 3  # header + 2 answers
        # An example from a label reaches the learner like one from the Examples tab.
        assert learner.get_stats()["total_examples"] == 2
    finally:
        wb.close()
        session.close()
    wb.labeling.close()  # closing twice is harmless


def test_a_session_of_another_learner_is_refused(learner: OnlineLearner, tmp_path: Path) -> None:
    other = make_learner(tmp_path / "other")
    session = LabelingSession(other, TEXTS, LABELS, order="sequential")
    try:
        with pytest.raises(ValueError, match="another learner"):
            Workbench(learner, auto_refresh=False, labeling=session)
    finally:
        session.close()
        other.close(checkpoint=False)
