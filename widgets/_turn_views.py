"""The chat thread's bubbles: a turn, and an answer with its feedback buttons and note."""

from __future__ import annotations

import html

import ipywidgets as w

from ._common import row
from ._controls import button
from ._conversation import Turn, bubble_html

__all__ = ["AnswerView", "TurnView"]


class TurnView(w.VBox):
    """One turn's bubble."""

    def __init__(self, turn: Turn, prompt: str | None = None) -> None:
        self.turn = turn
        self.prompt = prompt  # a raw completion's prompt, shown in the answer's bubble
        self.bubble = w.HTML(layout=w.Layout(width="auto"))
        super().__init__([self.bubble], layout=w.Layout(width="100%", flex="0 0 auto"))
        self.add_class("wb-turn")
        self.add_class(f"wb-turn-{turn.role}")
        self.render()

    def render(self, streaming: bool = False) -> None:
        self.bubble.value = bubble_html(self.turn, self.prompt, streaming)


class AnswerView(TurnView):
    """An answer's bubble with its feedback buttons and a note of what was taught from it."""

    def __init__(self, turn: Turn, prompt: str | None = None) -> None:
        # An icon font, not an emoji: renders without an emoji font.
        self.good = button("Good", "thumbs-up", "auto", tooltip="Learn this answer as the target")
        self.correct = button(
            "Correct it", "pencil", "auto", tooltip="Edit this answer and teach the correction"
        )
        self.note = w.HTML()
        super().__init__(turn, prompt)
        self.children = (self.bubble, row(self.good, self.correct, self.note))

    def render(self, streaming: bool = False) -> None:
        super().render(streaming)
        self.good.disabled = self.correct.disabled = streaming

    def show_note(self, text: str) -> None:
        safe = html.escape(text)
        self.note.value = (
            f"<span style='color:#1a7f37;font-size:0.85em'>{safe}</span>" if text else ""
        )
