"""Feedback on a chat answer: 👍 keeps it as the target, "Correct it" teaches the person's edit,
Undo takes back the session's newest submission (see ``chat.ChatPanel``, which mixes this in).

An answer keeps the id of the example taught from it: a second 👍 is the same example (the
store ignores a repeated id), a correction after a 👍 replaces it. The weight returns to its
default after each use.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as w

from workbench.learner import Learner

from ._common import StatusLine, guarded
from ._conversation import Conversation, Turn
from ._history import Submission, SubmissionHistory, undo_newest
from ._runtime import PanelRuntime
from ._turn_views import AnswerView, TurnView

__all__ = ["ChatFeedback"]


class ChatFeedback:
    """The feedback half of the chat panel; the panel owns the widgets named below."""

    learner: Learner
    runtime: PanelRuntime
    status: StatusLine
    conversation: Conversation
    turn_views: list[TurnView]
    taught: list[tuple[Turn, str]]
    history: SubmissionHistory
    weight: w.FloatSlider
    default_weight: float
    correction: w.Textarea
    correction_title: w.HTML
    correction_box: w.VBox
    _correcting: Turn | None

    def sync_history(self) -> None:
        raise NotImplementedError  # the panel's

    def _teach(self, answer: Turn, target: str, how: str) -> bool:
        """Add the example feedback on ``answer`` makes; False (and the reason shown) if none."""
        conv = self.conversation
        index = conv.index(answer)
        if not target:
            self.status.error("the answer is empty: use Correct it to write the target")
            return False
        weight = float(self.weight.value)
        example, replaces = conv.feedback(index, target, weight)
        result = self.learner.add_example(example)
        answer.example_id, answer.taught = result.id, target
        view = self.turn_views[index]
        if result.duplicate:
            if isinstance(view, AnswerView):
                view.show_note(f"already taught (#{result.seq})")
            self.status.show(f"already taught: this answer is example #{result.seq}", "info")
            return True
        if replaces is not None:  # one example per answer: the earlier feedback goes
            self.taught = [(t, i) for t, i in self.taught if i != replaces]
            self.history.discard(replaces)
            self.runtime.submit(
                lambda: self.learner.remove_example(replaces), None, "remove earlier feedback"
            )
            how += ", replacing the earlier feedback on this answer"
        self.taught.append((answer, result.id))
        example_id = result.id
        self.history.add(
            Submission(
                example_id, result.seq, "chat", target, lambda: self._forget(answer, example_id)
            )
        )
        self.weight.value = self.default_weight  # a weight is for one example, not sticky
        self.sync_history()
        if isinstance(view, AnswerView):
            view.show_note(f"taught #{result.seq} (weight {weight:g})")
        self.status.show(f"{how}: #{result.seq} (weight {weight:g}) {result.message}", "ok")
        return True

    @guarded
    def _on_good(self, answer: Turn) -> None:
        self._teach(answer, answer.content, "kept the answer")

    @guarded
    def _on_correct(self, answer: Turn) -> None:
        turns = self.conversation.turns[: self.conversation.index(answer) + 1]
        n = sum(t.role == "assistant" for t in turns)
        self._correcting = answer
        self.correction.value = answer.content
        self.correction_title.value = (
            f"<span style='font-size:0.9em'>Correct answer {n}: write the reply it should "
            "have been</span>"
        )
        self.correction_box.layout.display = "flex"

    @guarded
    def _on_submit_correction(self, _button: Any = None) -> None:
        answer = self._correcting
        if answer is None:
            self.status.error("press Correct it under an answer first")
            return
        text = self.correction.value
        if not self._teach(answer, text, "correction added"):
            return
        if text != answer.content:
            if answer.original is None:
                answer.original = answer.content
            answer.content = text  # the thread goes on from the corrected reply
            self.turn_views[self.conversation.index(answer)].render()
        self._close_correction()

    @guarded
    def _on_cancel_correction(self, _button: Any = None) -> None:
        self._close_correction()

    def _close_correction(self) -> None:
        self._correcting = None
        self.correction_box.layout.display = "none"

    @guarded
    def _on_undo(self, _button: Any = None) -> None:
        undo_newest(self.history, self.runtime, self.sync_history)
        self.sync_history()

    def _forget(self, answer: Turn, example_id: str) -> None:
        """Undo took back this panel's feedback on ``answer``: show the answer as it was."""
        self.taught = [(t, i) for t, i in self.taught if i != example_id]
        if answer.example_id == example_id:  # the answer may be taught afresh (a new id)
            answer.example_id = answer.taught = None
            if answer.original is not None:
                answer.content, answer.original = answer.original, None
            for view in self.turn_views:
                if view.turn is answer and isinstance(view, AnswerView):
                    view.render()
                    view.show_note("")
