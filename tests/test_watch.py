"""The watch list: pinned prompts keep their baseline, re-answer after updates, mark changes."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.learner.helpers import make_learner
from workbench.learner import OnlineLearner
from workbench.watch import DEFAULT_PROMPTS, WatchList

FRANCE = "The capital of France is"


@pytest.fixture
def learner(tmp_path: Path) -> Iterator[OnlineLearner]:
    lrn = make_learner(tmp_path / "session", update_frequency=1000)
    try:
        yield lrn
    finally:
        lrn.close(checkpoint=False)


def teach(learner: OnlineLearner, watch: WatchList, prompt: str, updates: int = 6) -> None:
    """Teach ``prompt`` a new continuation until its pinned answer changes."""
    learner.add_example(prompt, " Rome, Rome, Rome.")
    for _ in range(updates):
        learner.force_update()
        if any(r.changed for r in watch.refresh_now() if r.prompt == prompt):
            return


def test_defaults_are_pinned_and_an_empty_list_pins_none(learner: OnlineLearner) -> None:
    assert WatchList(learner, background=False).prompts == list(DEFAULT_PROMPTS)
    assert WatchList(learner, prompts=(), background=False).results() == []


def test_pinning_takes_a_baseline_that_nothing_has_changed(learner: OnlineLearner) -> None:
    watch = WatchList(learner, [FRANCE], max_new_tokens=4, background=False)
    (before,) = watch.results()
    assert (before.baseline, before.answer, before.changed) == (None, None, False)
    (result,) = watch.refresh_now()
    assert result.baseline == result.answer and result.answer  # greedy: the same text twice
    assert (result.changed, result.version, result.mode) == (False, 0, "complete")
    assert watch.changed_count == 0
    assert watch.refresh_now() == [result]  # same weights: nothing is re-answered


def test_teaching_marks_the_changed_answer_and_counts_it(learner: OnlineLearner) -> None:
    watch = WatchList(learner, [FRANCE], max_new_tokens=6, background=False)
    (first,) = watch.refresh_now()
    teach(learner, watch, FRANCE)
    (result,) = watch.results()
    assert result.changed and result.baseline == first.baseline
    assert result.answer != first.answer and result.version is not None and result.version > 0
    assert watch.changed_count == 1
    watch.rebaseline()  # the person accepts the new answer
    assert watch.changed_count == 0 and watch.results()[0].baseline == result.answer


def test_pin_twice_unpin_and_bad_prompts(learner: OnlineLearner) -> None:
    watch = WatchList(learner, [FRANCE], background=False)
    assert not watch.pin(FRANCE)
    assert watch.pin("Water is made of") and watch.prompts == [FRANCE, "Water is made of"]
    assert watch.unpin(FRANCE) and not watch.unpin(FRANCE)
    assert watch.prompts == ["Water is made of"]
    with pytest.raises(ValueError, match="non-empty"):
        watch.pin("   ")
    with pytest.raises(ValueError, match="max_new_tokens"):
        WatchList(learner, max_new_tokens=0)


def test_an_update_re_answers_in_the_background(tmp_path: Path) -> None:
    lrn = make_learner(tmp_path / "session", update_frequency=1)
    watch = WatchList(lrn, [FRANCE], max_new_tokens=6, interval=60.0)  # only the hook wakes it
    try:
        deadline = time.monotonic() + 60
        while watch.results()[0].baseline is None and time.monotonic() < deadline:
            time.sleep(0.05)
        baseline = watch.results()[0].baseline
        assert baseline is not None
        for _ in range(6):
            lrn.add_example(FRANCE, " Rome, Rome, Rome.")
            assert lrn.wait_idle(60)
            version = lrn.get_stats()["version"]
            while watch.results()[0].version != version and time.monotonic() < deadline:
                time.sleep(0.05)
            if watch.changed_count:
                break
        assert watch.results()[0].version == lrn.get_stats()["version"] > 0
        assert watch.changed_count == 1
        assert lrn.get_stats()["last_error"] is None  # the hook never disturbed the worker
    finally:
        watch.close()
        lrn.close(checkpoint=False)


def test_a_closed_watch_list_leaves_the_worker_alone(learner: OnlineLearner) -> None:
    watch = WatchList(learner, [FRANCE], interval=0.2)
    watch.close()
    del watch
    learner.add_example(FRANCE, " Rome.")
    learner.force_update()  # runs the (now dangling) hook
    assert learner.get_stats()["last_error"] is None


class ChatDouble:
    """Just what the watch list calls: a model with a chat template that says who asked."""

    def __init__(self) -> None:
        self.version = 0

    def get_stats(self) -> dict[str, Any]:
        return {"version": self.version, "state": "idle"}

    def chat_template(self) -> str | None:
        return "{{ messages }}"

    def chat(self, messages: Sequence[Mapping[str, str]], max_new_tokens: int = 64) -> str:
        return f"chat v{self.version}"

    def generate(self, prompt: str, max_new_tokens: int = 64) -> str:
        if "fail" in prompt:
            raise RuntimeError("boom")
        return f"complete v{self.version}"


def test_questions_go_through_chat_and_failures_are_kept_per_prompt() -> None:
    double = ChatDouble()
    watch = WatchList(double, ["What is 2+2?", "2+2 is", "fail here"], background=False)  # type: ignore[arg-type]
    question, statement, failing = watch.refresh_now()
    assert (question.mode, question.answer) == ("chat", "chat v0")
    assert (statement.mode, statement.answer) == ("complete", "complete v0")
    assert failing.answer is None and failing.error == "RuntimeError: boom"
    double.version = 1
    question, statement, _ = watch.refresh_now()
    assert question.changed and statement.changed and watch.changed_count == 2
