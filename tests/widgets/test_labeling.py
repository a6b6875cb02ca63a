"""The labeling panel: keys and buttons drive the session; the display follows it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from workbench.widgets.labeling import LabelingPanel, agreement_svg

from workbench.labeling import LabelingSession
from workbench.learner import OnlineLearner

LABELS = ["positive", "negative", "neutral"]


@pytest.fixture
def panel(learner: OnlineLearner) -> Iterator[LabelingPanel]:
    learner.disable()  # the tiny model's updates would only slow these tests down
    texts = [f"review {i}: {'good' if i % 2 else 'bad'} pills" for i in range(6)]
    session = LabelingSession(learner, texts, LABELS, order="sequential")
    p = LabelingPanel(session, auto_refresh=False)
    assert p.wait(60)
    try:
        yield p
    finally:
        p.close()
        session.close()


def test_the_item_its_scores_and_the_suggestion_are_shown(panel: LabelingPanel) -> None:
    s = panel.current
    assert s is not None and s.item_id == panel.session.items[0].id
    assert "review 0" in panel.text.value
    assert panel.bars.value.count("wb-label-bar") == 3
    styles = [b.button_style for b in panel.label_buttons]
    assert styles == ["info" if lab == s.label else "" for lab in LABELS]
    assert [b.description for b in panel.label_buttons] == [
        "1 positive",
        "2 negative",
        "3 neutral",
    ]


def test_keys_answer_and_move_on(panel: LabelingPanel) -> None:
    session = panel.session
    panel.key_listener.press("2")  # a label by number
    assert panel.last_key_ms is not None and panel.last_key_ms < 100
    assert panel.wait(60)
    assert session.answers()[-1].label == "negative"
    assert panel.current is not None and "review 1" in panel.text.value
    suggested = panel.current.label
    panel.key_listener.press("a")  # accept the suggestion
    assert panel.wait(60)
    panel.key_listener.press("space")  # skip
    assert panel.wait(60)
    panel.key_listener.press("x")  # reject
    assert panel.wait(60)
    kinds = [(a.answer, a.label) for a in session.answers()]
    assert kinds[1] == ("accept", suggested)
    assert kinds[2] == ("skip", None) and kinds[3][0] == "reject"
    panel.key_listener.press("9")  # no ninth label: nothing happens
    assert panel.wait(60)
    assert len(session.answers()) == 4
    panel.refresh()
    assert panel.progress.value == 4 and "4 / 6" in panel.progress_text.value
    assert panel.history.value.count("<tr>") == 5  # header + 4 answers


def test_backspace_undoes_and_shows_the_item_again(panel: LabelingPanel) -> None:
    first = panel.current
    assert first is not None
    panel.key_listener.press("1")
    assert panel.wait(60)
    panel.key_listener.press("Backspace")
    assert panel.wait(60)
    assert panel.session.answers() == []
    assert panel.current is not None and panel.current.item_id == first.item_id
    assert "undid" in panel.status.value


def test_an_answer_from_the_history_can_be_changed(panel: LabelingPanel) -> None:
    panel.key_listener.press("1")
    assert panel.wait(60)
    panel.refresh()
    n = panel.session.answers()[0].n
    panel.edit_answer.value = n
    panel.edit_label.value = "neutral"
    panel.edit_button.click()
    (only,) = panel.session.answers()
    assert only.label == "neutral" and only.item_id == panel.session.items[0].id


def test_the_last_item_ends_the_queue(panel: LabelingPanel) -> None:
    for _ in range(6):
        panel.key_listener.press("space")
        assert panel.wait(60)
    assert panel.current is None and "every item is answered" in panel.text.value
    assert all(b.disabled for b in panel.label_buttons)


def test_agreement_curve_svg() -> None:
    assert "after two answers" in agreement_svg([1.0])
    svg = agreement_svg([0.0, 0.5, 1.0], width=100, height=54)
    assert "points='0.0,52.0 50.0,27.0 100.0,2.0'" in svg


def test_next_item_shows_cached_scores_then_the_current_ones(learner: OnlineLearner) -> None:
    """After an update, the next item appears at once with the scores the session had (the
    caption names their version), then with the current version's."""
    from workbench.learner import TrainingExample

    learner.disable()
    texts = [f"review {i}: {'good' if i % 3 else 'bad'} pills, {i * 7} days" for i in range(8)]
    session = LabelingSession(learner, texts, LABELS, order="uncertainty", candidates=3, seed=0)
    panel = LabelingPanel(session, auto_refresh=False)
    try:
        assert panel.wait(60)
        old = int(learner.get_stats()["version"])
        learner.add_example(TrainingExample("an unrelated", " example"))
        learner.force_update()
        new = int(learner.get_stats()["version"])
        assert new > old
        seen: list[str] = []
        panel.bars.observe(lambda change: seen.append(change["new"]), "value")
        panel.key_listener.press("1")
        assert panel.wait(60)
        captions = [v.split("</div>")[0] for v in seen if "wb-label-bar" in v]
        assert captions[0].endswith(f"scores of model v{old}"), captions
        assert captions[-1].endswith(f"scores of model v{new}"), captions
        assert panel.current is not None and panel.current.version == new
        panel.key_listener.press("2")  # the answer records the scores the person saw last
        assert panel.wait(60)
        assert session.answers()[-1].model_version == new
    finally:
        panel.close()
        session.close()
