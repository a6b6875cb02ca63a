"""Chat panel: generate with the chosen settings, stream, and turn feedback into examples."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from workbench.widgets import ChatPanel

from workbench.learner import OnlineLearner

SETTINGS = {"max_new_tokens": 12, "temperature": 1.0, "seed": 3}


def ask(panel: ChatPanel, prompt: str = "Hello, ") -> str:
    panel.prompt.value = prompt
    panel.max_new_tokens.value = SETTINGS["max_new_tokens"]
    panel.temperature.value = SETTINGS["temperature"]
    panel.seed.value = SETTINGS["seed"]
    panel.generate.click()
    assert panel.wait(60)
    return panel.answer


def test_generate_uses_the_sampling_settings(learner: OnlineLearner) -> None:
    panel = ChatPanel(learner)
    answer = ask(panel)
    assert answer == learner.generate("Hello, ", **SETTINGS)  # type: ignore[arg-type]
    assert panel.status.kind == "ok"
    assert not panel.generate.disabled and panel.stop.disabled
    assert not panel.thumbs_up.disabled and not panel.correct.disabled
    assert "Hello, " in panel.output.value


def test_sampling_controls_map_to_generate_arguments(learner: OnlineLearner) -> None:
    panel = ChatPanel(learner)
    assert panel._sampling()["top_k"] is None and panel._sampling()["top_p"] is None
    assert panel._sampling()["seed"] is None
    panel.top_k.value, panel.top_p.value, panel.seed.value = 5, 0.9, 0
    assert panel._sampling() | {} == {
        "max_new_tokens": 64,
        "temperature": 0.0,
        "top_k": 5,
        "top_p": 0.9,
        "seed": 0,
    }


def test_streamed_pieces_reach_the_output_and_stop_ends_generation(
    learner: OnlineLearner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("workbench.widgets.chat.STREAM_INTERVAL", 0.0)
    seen: list[str] = []
    halfway, go_on = threading.Event(), threading.Event()

    def fake_generate(prompt: str, stream: Any = None, **_: Any) -> str:
        out = ""
        for piece in ("Par", "is", " is", " big"):
            out += piece
            if stream(piece):
                return out
            seen.append(panel.output.value)
            if piece == "is":
                halfway.set()
                go_on.wait(10)
        return out

    monkeypatch.setattr(learner, "generate", fake_generate)
    panel = ChatPanel(learner)
    panel.prompt.value = "The capital of France is "
    panel.generate.click()
    assert not panel.stop.disabled
    assert halfway.wait(10)
    panel.stop.click()
    go_on.set()
    assert panel.wait(10)
    assert "Par" in seen[0] and "Paris" in seen[1]
    assert panel.answer == "Paris is" and "stopped" in panel.status.text


def test_thumbs_up_teaches_the_answer_with_the_chosen_weight(learner: OnlineLearner) -> None:
    panel = ChatPanel(learner)
    answer = ask(panel, "Q: 2 + 2? A:")
    assert answer, "the tiny model produced an empty answer for this seed"
    panel.weight.value = 3.0
    panel.thumbs_up.click()
    (record,) = learner.recent_examples(5)
    assert (record.input, record.target, record.weight) == ("Q: 2 + 2? A:", answer, 3.0)
    assert panel.status.kind == "ok" and "kept the answer" in panel.status.text


def test_correct_it_submits_the_edited_answer_as_the_target(learner: OnlineLearner) -> None:
    panel = ChatPanel(learner)
    answer = ask(panel, "The capital of France is")
    panel.correct.click()
    assert panel.correction_box.layout.display == "flex"
    assert panel.correction.value == answer
    panel.correction.value = " Paris"
    panel.submit_correction.click()
    (record,) = learner.recent_examples(5)
    assert (record.input, record.target) == ("The capital of France is", " Paris")
    assert panel.correction_box.layout.display == "none" and panel.answer == " Paris"


def test_feedback_errors_are_shown(learner: OnlineLearner) -> None:
    panel = ChatPanel(learner)
    panel.thumbs_up.click()  # disabled in the page; a script can still call it
    assert panel.status.kind == "error" and "generate an answer first" in panel.status.text
    panel.generate.click()
    assert panel.status.kind == "error" and "type a prompt" in panel.status.text
    ask(panel)
    panel.correct.click()
    panel.correction.value = ""
    panel.submit_correction.click()
    assert panel.status.kind == "error"
    panel.max_new_tokens.value = 300
    panel.prompt.value = "x"
    panel.max_new_tokens.max = 512
    panel.max_new_tokens.value = 512  # more than the tiny model's context (256)
    panel.generate.click()
    assert panel.wait(30)
    assert panel.status.kind == "error" and "context" in panel.status.text
    assert learner.get_stats()["total_examples"] == 0
