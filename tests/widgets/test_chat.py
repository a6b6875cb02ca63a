"""Chat panel: a conversation (or raw completion) with the chosen settings, streamed, and
feedback on any answer turned into exactly one example per answer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from workbench.widgets import ChatPanel, Workbench
from workbench.widgets._conversation import Conversation, template_name

from workbench.learner import OnlineLearner

SETTINGS: dict[str, Any] = {"max_new_tokens": 12, "temperature": 1.0, "seed": 3}
# ChatML-like, ending a turn with the byte tokenizer's one special token so replies stop there.
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|endoftext|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "chat_templates"


@pytest.fixture
def chat_learner(learner: OnlineLearner) -> OnlineLearner:
    learner.tokenizer.chat_template = TEMPLATE  # the published tokenizer is the worker's too
    return learner


@pytest.fixture
def seen(learner: OnlineLearner, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """What the panel asked the learner: ("chat", messages) or ("generate", prompt)."""
    calls: list[Any] = []
    chat, generate = learner.chat, learner.generate

    def spy_chat(messages: Any, **kw: Any) -> str:
        calls.append(("chat", [dict(m) for m in messages]))
        return chat(messages, **kw)

    def spy_generate(prompt: str, **kw: Any) -> str:
        calls.append(("generate", prompt))
        return generate(prompt, **kw)

    monkeypatch.setattr(learner, "chat", spy_chat)
    monkeypatch.setattr(learner, "generate", spy_generate)
    yield calls


def configure(panel: ChatPanel) -> None:
    panel.max_new_tokens.value = SETTINGS["max_new_tokens"]
    panel.temperature.value = SETTINGS["temperature"]
    panel.seed.value = SETTINGS["seed"]


def say(panel: ChatPanel, text: str) -> str:
    configure(panel)
    panel.prompt.value = text
    panel.send.click()
    assert panel.wait(60)
    assert panel.status.kind == "ok", panel.status.text
    return panel.answer


USER_1, USER_2 = "What is 2 + 2?", "And 3 + 3?"


def two_turns(panel: ChatPanel, system: str = "Answer briefly.") -> tuple[str, str]:
    panel.system.value = system
    first = say(panel, USER_1)
    second = say(panel, USER_2)
    assert first and second, "the tiny model gave an empty answer for this seed"
    return first, second


# ---------------------------------------------------------------------- the template in use
@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("gemma-2-2b-it", "Gemma"),
        ("llama-3.2-3b-instruct", "Llama 3"),
        ("llama-3.3-70b-instruct", "Llama 3"),
        ("mistral-7b-instruct-v0.3", "Llama 2 / Mistral"),
        ("qwen2.5-7b-instruct", "ChatML"),
        ("smollm2-135m-instruct", "ChatML"),
    ],
)
def test_real_templates_get_their_short_name(model: str, name: str) -> None:
    assert template_name((TEMPLATES / f"{model}.jinja").read_text(encoding="utf-8")) == name


def test_a_model_without_template_gets_raw_completion(learner: OnlineLearner, seen: list) -> None:
    panel = ChatPanel(learner)
    assert "none (raw completion only)" in panel.template_info.value
    assert panel.mode.value == "raw" and panel.mode.disabled
    assert panel.send.description == "Generate" and panel.system.layout.display == "none"
    answer = say(panel, "Hello, ")
    assert seen == [("generate", "Hello, ")]
    assert answer == learner.generate("Hello, ", **SETTINGS)
    assert panel.prompt.value == "Hello, "  # kept: edit it and generate again
    assert "Hello, " in panel.answer_view().bubble.value
    assert not panel.send.disabled and panel.stop.disabled
    panel.weight.value = 3.0
    panel.answer_view().good.click()
    (record,) = learner.recent_examples(5)
    assert (record.input, record.target, record.weight, record.messages) == (
        "Hello, ",
        answer,
        3.0,
        None,
    )


def test_a_model_with_a_template_chats(chat_learner: OnlineLearner, seen: list) -> None:
    panel = ChatPanel(chat_learner)
    assert "chat template: ChatML (from the model)" in panel.template_info.value
    assert panel.mode.value == "chat" and not panel.mode.disabled
    assert panel.send.description == "Send"
    first, second = two_turns(panel)
    assert panel.prompt.value == ""  # sent: the box is free for the next message
    assert panel.system.disabled  # the system prompt holds for the whole chat
    system = {"role": "system", "content": "Answer briefly."}
    q1, q2 = ({"role": "user", "content": q} for q in (USER_1, USER_2))
    a1 = {"role": "assistant", "content": first}
    assert seen == [("chat", [system, q1]), ("chat", [system, q1, a1, q2])]
    assert second == chat_learner.chat([system, q1, a1, q2], **SETTINGS)
    roles = [v.turn.role for v in panel.turn_views]
    assert roles == ["user", "assistant", "user", "assistant"]
    # newest first in the page: the thread is laid out column-reverse to stay scrolled down
    assert panel.thread.children == tuple(reversed(panel.turn_views))


def test_turns_are_html_escaped(chat_learner: OnlineLearner) -> None:
    panel = ChatPanel(chat_learner)
    say(panel, "<script>alert(1)</script> & co")
    bubble = panel.turn_views[0].bubble.value
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in bubble and "<script>" not in bubble


# ---------------------------------------------------------------------- feedback
def test_feedback_on_an_earlier_answer_teaches_the_conversation_up_to_it(
    chat_learner: OnlineLearner,
) -> None:
    panel = ChatPanel(chat_learner)
    first, _ = two_turns(panel)
    panel.weight.value = 3.0
    panel.answer_view(0).good.click()
    (record,) = chat_learner.recent_examples(5)
    assert record.messages == (
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": USER_1},
    )
    assert (record.target, record.weight, record.input) == (first, 3.0, USER_1)
    assert panel.weight.value == 1.0, "the weight must not stick after use (issue 19)"
    assert "kept the answer" in panel.status.text and "#1" in panel.answer_view(0).note.value


def test_a_second_thumbs_up_on_the_same_answer_adds_nothing(chat_learner: OnlineLearner) -> None:
    panel = ChatPanel(chat_learner)
    two_turns(panel)
    panel.answer_view(1).good.click()
    panel.weight.value = 5.0
    panel.answer_view(1).good.click()
    records = chat_learner.recent_examples(5)
    assert len(records) == 1 and records[0].weight == 1.0
    assert chat_learner.get_stats()["total_examples"] == 1
    assert "already taught" in panel.status.text and panel.status.kind == "info"
    assert "already taught" in panel.answer_view(1).note.value
    assert panel.weight.value == 5.0  # not used, so not reset
    panel.answer_view(0).good.click()  # another answer is another example
    assert len(chat_learner.recent_examples(5)) == 2


def test_correct_it_on_any_answer_teaches_the_edit_and_the_chat_goes_on_from_it(
    chat_learner: OnlineLearner, seen: list
) -> None:
    panel = ChatPanel(chat_learner)
    first, _ = two_turns(panel, system="")
    panel.answer_view(0).correct.click()
    assert panel.correction_box.layout.display == "flex"
    assert panel.correction.value == first and "answer 1" in panel.correction_title.value
    panel.weight.value = 10.0
    panel.correction.value = "4"
    panel.submit_correction.click()
    (record,) = chat_learner.recent_examples(5)
    assert record.messages == ({"role": "user", "content": USER_1},)
    assert (record.target, record.weight) == ("4", 10.0)
    assert panel.weight.value == 1.0  # no sticky 10 after a correction (issue 19)
    assert panel.correction_box.layout.display == "none"
    assert panel.conversation.turns[1].content == "4"
    assert "corrected" in panel.answer_view(0).bubble.value
    say(panel, "And 5 + 5?")
    assert seen[-1][1][1] == {"role": "assistant", "content": "4"}


def test_a_correction_after_a_thumbs_up_replaces_it_and_undo_removes_exactly_it(
    chat_learner: OnlineLearner,
) -> None:
    panel = ChatPanel(chat_learner)
    first, second = two_turns(panel)
    panel.answer_view(0).good.click()  # kept, stays
    panel.answer_view(1).good.click()  # replaced by the correction below
    panel.answer_view(1).correct.click()
    panel.correction.value = "6"
    panel.submit_correction.click()
    assert panel.wait(30)
    assert "replacing the earlier feedback" in panel.status.text
    kept, replaced, correction = chat_learner.recent_examples(5)
    assert (kept.target, replaced.target, correction.target) == (first, second, "6")
    assert [r.status == "removed" for r in (kept, replaced, correction)] == [False, True, False]
    assert [i for _, i in panel.taught] == [kept.id, correction.id]

    panel.undo.click()
    assert panel.wait(30)
    assert panel.status.kind == "ok" and "undid #3 (chat feedback '6')" in panel.status.text
    removed = {r.id: r.status == "removed" for r in chat_learner.recent_examples(5)}
    assert removed == {kept.id: False, replaced.id: True, correction.id: True}
    assert panel.conversation.turns[3].content == second  # the model's answer is back
    assert panel.answer_view(1).note.value == ""
    panel.answer_view(1).good.click()  # taught afresh: a new example, not the removed id
    assert chat_learner.recent_examples(5)[-1].status != "removed"
    assert chat_learner.get_stats()["total_examples"] == 2
    panel.undo.click()
    panel.undo.click()
    assert panel.wait(30) and panel.undo.disabled
    assert chat_learner.get_stats()["total_examples"] == 0
    panel.undo.click()
    assert panel.status.kind == "error" and "nothing to undo" in panel.status.text


# ---------------------------------------------------------------------- regenerate, new chat, mode
def test_regenerate_answers_the_last_message_again(chat_learner: OnlineLearner, seen: list) -> None:
    panel = ChatPanel(chat_learner)
    assert panel.regenerate.disabled
    two_turns(panel)
    panel.seed.value = 11
    panel.regenerate.click()
    assert panel.wait(60) and panel.status.kind == "ok"
    assert len(panel.conversation.turns) == 4 and len(panel.turn_views) == 4
    assert seen[-1] == seen[-2]  # the same conversation, answered again
    settings = {**SETTINGS, "seed": 11}
    assert panel.answer == chat_learner.chat(seen[-1][1], **settings)


def test_a_failed_answer_leaves_the_conversation_as_it_was(chat_learner: OnlineLearner) -> None:
    panel = ChatPanel(chat_learner)
    first, second = two_turns(panel)
    panel.max_new_tokens.value = 512  # more than the tiny model's context (256)
    panel.regenerate.click()
    assert panel.wait(30)
    assert panel.status.kind == "error" and "context" in panel.status.text
    assert [t.content for t in panel.conversation.turns][1::2] == [first, second]
    panel.prompt.value = "And 4 + 4?"
    panel.send.click()
    assert panel.wait(30) and panel.status.kind == "error"
    assert len(panel.conversation.turns) == 4 and len(panel.turn_views) == 4
    assert panel.prompt.value == "And 4 + 4?"  # back in the box, to fix and send again
    assert not panel.send.disabled and not panel.regenerate.disabled


def test_new_chat_starts_over_and_undo_still_reaches_earlier_feedback(
    chat_learner: OnlineLearner,
) -> None:
    panel = ChatPanel(chat_learner)
    two_turns(panel)
    panel.answer_view().good.click()
    panel.new_chat.click()
    assert panel.conversation.turns == [] and panel.thread.children == (panel.empty,)
    assert not panel.system.disabled and panel.regenerate.disabled
    panel.system.value = "Be terse."
    say(panel, "Hi")
    assert panel.conversation.messages_up_to(1)[0] == {"role": "system", "content": "Be terse."}
    panel.undo.click()
    assert panel.wait(30) and chat_learner.recent_examples(5)[0].status == "removed"


def test_raw_completion_can_be_chosen_on_a_chat_model(
    chat_learner: OnlineLearner, seen: list
) -> None:
    panel = ChatPanel(chat_learner)
    say(panel, "Hi")
    panel.mode.value = "raw"
    assert panel.conversation.raw and panel.conversation.turns == []
    assert panel.send.description == "Generate" and panel.regenerate.layout.display == "none"
    answer = say(panel, "The capital of France is")
    assert seen[-1] == ("generate", "The capital of France is")
    panel.answer_view().correct.click()
    panel.correction.value = " Paris"
    panel.submit_correction.click()
    (record,) = chat_learner.recent_examples(5)
    assert (record.input, record.target, record.messages) == (
        "The capital of France is",
        " Paris",
        None,
    )
    assert answer != " Paris"
    panel.refresh()  # the template did not change: the person's choice stands
    assert panel.conversation.raw
    panel.mode.value = "chat"
    assert not panel.conversation.raw and panel.send.description == "Send"


def test_the_mode_follows_the_models_template(chat_learner: OnlineLearner) -> None:
    panel = ChatPanel(chat_learner)
    chat_learner.tokenizer.chat_template = None  # as if weights without a template were loaded
    panel.refresh()
    assert panel.conversation.raw and panel.mode.value == "raw" and panel.mode.disabled
    assert "none" in panel.template_info.value
    panel.mode.value = "chat"  # a script can still try
    assert panel.status.kind == "error" and panel.mode.value == "raw"
    chat_learner.tokenizer.chat_template = TEMPLATE
    say(panel, "Hi")  # a send re-reads the template; the empty raw chat becomes a chat
    assert not panel.conversation.raw and panel.conversation.turns[0].content == "Hi"


def test_the_workbench_tells_the_chat_about_new_weights(chat_learner: OnlineLearner) -> None:
    wb = Workbench(chat_learner, auto_refresh=False)
    wb.refresh()
    assert not wb.chat.conversation.raw
    chat_learner.tokenizer.chat_template = None
    chat_learner.add_example("The sky is")
    chat_learner.force_update()  # publishes a new version, as loading weights does
    wb.refresh()
    assert wb.chat.conversation.raw and "none" in wb.chat.template_info.value
    wb.close()


# ---------------------------------------------------------------------- generation details
def test_sampling_controls_map_to_generation_arguments(learner: OnlineLearner) -> None:
    panel = ChatPanel(learner)
    assert panel._sampling()["top_k"] is None and panel._sampling()["top_p"] is None
    assert panel._sampling()["seed"] is None
    panel.top_k.value, panel.top_p.value, panel.seed.value = 5, 0.9, 0
    assert panel._sampling() == {
        "max_new_tokens": 64,
        "temperature": 0.0,
        "top_k": 5,
        "top_p": 0.9,
        "seed": 0,
    }


def test_streamed_pieces_reach_the_last_bubble_and_stop_ends_generation(
    chat_learner: OnlineLearner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("workbench.widgets.chat.STREAM_INTERVAL", 0.0)
    shown: list[str] = []
    halfway, go_on = threading.Event(), threading.Event()

    def fake_chat(messages: Any, stream: Any = None, **_: Any) -> str:
        out = ""
        for piece in ("Par", "is", " is", " big"):
            out += piece
            if stream(piece):
                return out
            shown.append(panel.answer_view().bubble.value)
            if piece == "is":
                halfway.set()
                go_on.wait(10)
        return out

    monkeypatch.setattr(chat_learner, "chat", fake_chat)
    panel = ChatPanel(chat_learner)
    panel.prompt.value = "Capital of France?"
    panel.send.click()
    assert not panel.stop.disabled and panel.send.disabled and panel.new_chat.disabled
    assert halfway.wait(10)
    assert panel.answer_view().good.disabled  # no feedback on a half answer
    panel.stop.click()
    go_on.set()
    assert panel.wait(10)
    assert "Par" in shown[0] and "Paris" in shown[1] and "▍" in shown[1]
    assert panel.answer == "Paris is" and "stopped" in panel.status.text
    assert not panel.answer_view().good.disabled


def test_errors_are_shown(chat_learner: OnlineLearner, monkeypatch: pytest.MonkeyPatch) -> None:
    panel = ChatPanel(chat_learner)
    panel.send.click()
    assert panel.status.kind == "error" and "type a message" in panel.status.text
    panel.regenerate.click()  # disabled in the page; a script can still call it
    assert panel.status.kind == "error" and "nothing to regenerate" in panel.status.text
    panel.submit_correction.click()
    assert panel.status.kind == "error" and "Correct it" in panel.status.text
    monkeypatch.setattr(chat_learner, "chat", lambda *a, **k: "")
    say(panel, "Hi")
    panel.answer_view().good.click()
    assert panel.status.kind == "error" and "empty" in panel.status.text
    panel.answer_view().correct.click()
    panel.correction.value = ""
    panel.submit_correction.click()
    assert panel.status.kind == "error" and panel.correction_box.layout.display == "flex"
    assert chat_learner.get_stats()["total_examples"] == 0


def test_conversation_rejects_feedback_on_a_user_turn() -> None:
    conv = Conversation()
    conv.add("user", "Hi")
    conv.add("assistant", "Hello")
    with pytest.raises(ValueError, match="not an answer"):
        conv.example(0, "x")
    with pytest.raises(IndexError):
        conv.messages_up_to(3)
