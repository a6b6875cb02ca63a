"""Examples panel: submit, weight, Ctrl+Enter, the status table, undo."""

from __future__ import annotations

from workbench.widgets import ExamplesPanel

from workbench.learner import OnlineLearner


def test_submit_stores_the_example_with_its_target_and_weight(learner: OnlineLearner) -> None:
    panel = ExamplesPanel(learner, auto_refresh=False)
    panel.input.value = "The capital of Mars is"
    panel.target.value = " Olympus"
    panel.weight.value = 4.0
    panel.submit.click()
    (record,) = learner.recent_examples(5)
    assert (record.input, record.target, record.weight) == (
        "The capital of Mars is",
        " Olympus",
        4.0,
    )
    assert learner.get_stats()["total_examples"] == 1
    assert panel.status.kind == "ok" and f"#{record.seq}" in panel.status.text
    assert panel.input.value == "" and panel.target.value == ""  # ready for the next one
    assert "The capital of Mars is" in panel.table.value and "stored" in panel.table.value
    panel.close()


def test_weight_slider_spans_a_tenth_to_ten(learner: OnlineLearner) -> None:
    panel = ExamplesPanel(learner, auto_refresh=False)
    assert (panel.weight.base**panel.weight.min, panel.weight.base**panel.weight.max) == (
        0.1,
        10.0,
    )
    panel.close()


def test_empty_target_is_self_supervised_and_ctrl_enter_submits(learner: OnlineLearner) -> None:
    panel = ExamplesPanel(learner, auto_refresh=False)
    panel.input.value = "hello world"
    panel.target.value = "   "
    panel.ctrl_enter.press()  # what the Ctrl+Enter front end triggers
    (record,) = learner.recent_examples(5)
    assert record.input == "hello world" and record.target is None
    panel.ctrl_enter._handle(panel.ctrl_enter, {"event": "ctrl-enter"}, [])  # the message path
    assert panel.status.kind == "error"  # the input was cleared: nothing to submit
    assert learner.get_stats()["total_examples"] == 1
    panel.close()


def test_invalid_input_is_shown_not_raised(learner: OnlineLearner) -> None:
    panel = ExamplesPanel(learner, auto_refresh=False)
    panel.input.value = ""
    panel.submit.click()
    assert panel.status.kind == "error" and "type an example" in panel.status.text
    panel.input.value = "bad\x00byte"
    panel.submit.click()
    assert panel.status.kind == "error" and "NUL" in panel.status.text
    assert panel.input.value == "bad\x00byte"  # kept, so the person can fix it
    assert learner.get_stats()["total_examples"] == 0
    panel.close()


def test_table_shows_trained_status_and_undo_removes_the_last(learner: OnlineLearner) -> None:
    panel = ExamplesPanel(learner, auto_refresh=False)
    for text in ("one", "two", "three"):
        panel.input.value = text
        panel.submit.click()
    learner.disable()  # keep "three" stored: the background update needs two new examples
    learner.force_update()
    panel.refresh()
    assert "trained" in panel.table.value

    panel.undo.click()
    assert panel.wait(30)
    statuses = {r.input: r.status for r in learner.recent_examples(10)}
    assert statuses["three"] == "removed"
    assert learner.get_stats()["total_examples"] == 2
    assert "removed" in panel.table.value and panel.status.kind == "ok"
    panel.undo.click()
    panel.undo.click()
    assert panel.wait(30)
    assert panel.undo.disabled  # nothing left that this panel added
    panel.undo.click()
    assert panel.status.kind == "error"
    panel.close()
