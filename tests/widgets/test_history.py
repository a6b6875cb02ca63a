"""One session-wide history: Undo in either panel takes back the newest submission, from either."""

from __future__ import annotations

from workbench.widgets import ChatPanel, ExamplesPanel, Workbench

from workbench.learner import OnlineLearner

from .test_chat import say


def statuses(learner: OnlineLearner) -> dict[str, str]:
    return {r.input: r.status for r in learner.recent_examples(10)}


def test_undo_in_examples_takes_back_the_newer_chat_feedback(learner: OnlineLearner) -> None:
    learner.disable()  # no background update in between: the statuses stay "stored"
    wb = Workbench(learner, auto_refresh=False)
    wb.examples.input.value = "The sky on Mars is"
    wb.examples.target.value = " butterscotch"
    wb.examples.submit.click()
    say(wb.chat, "The capital of France is")  # the tiny model has no template: raw completion
    wb.chat.answer_view().good.click()
    wb.refresh()
    assert len(wb.history) == 2 and not wb.examples.undo.disabled and not wb.chat.undo.disabled
    assert wb.examples.history_view.value == wb.chat.history_view.value
    assert "chat feedback" in wb.examples.history_view.value.split("<li>")[1]  # newest first

    wb.examples.undo.click()  # the Examples panel's Undo, but the chat feedback is newer
    assert wb.wait(30)
    assert wb.examples.status.kind == "ok" and "chat feedback" in wb.examples.status.text
    assert statuses(learner) == {
        "The sky on Mars is": "stored",
        "The capital of France is": "removed",
    }
    assert wb.chat.taught == [] and wb.chat.answer_view().note.value == ""  # the chat shows it

    wb.chat.undo.click()  # and the Chat panel's Undo reaches the example
    assert wb.wait(30)
    assert "#1 (example 'The sky on Mars is')" in wb.chat.status.text
    assert set(statuses(learner).values()) == {"removed"}
    wb.refresh()
    assert wb.examples.undo.disabled and wb.chat.undo.disabled
    assert "nothing submitted yet" in wb.examples.history_view.value
    wb.examples.undo.click()
    assert wb.examples.status.kind == "error" and "nothing to undo" in wb.examples.status.text
    wb.close()


def test_standalone_panels_keep_their_own_history(learner: OnlineLearner) -> None:
    examples, chat = ExamplesPanel(learner, auto_refresh=False), ChatPanel(learner)
    assert examples.history is not chat.history
    examples.input.value = "one"
    examples.submit.click()
    assert len(examples.history) == 1 and len(chat.history) == 0 and chat.undo.disabled
    examples.close()
    chat.close()


def test_the_examples_weight_returns_to_its_default(learner: OnlineLearner) -> None:
    panel = ExamplesPanel(learner, auto_refresh=False)
    panel.weight.value = 5.0
    panel.input.value = "heavy"
    panel.submit.click()
    assert learner.recent_examples(1)[0].weight == 5.0
    assert panel.weight.value == panel.default_weight == 1.0
    panel.close()
