"""A conversation as plain data: turns, feedback on an answer as an example, bubbles as HTML.

No widgets here: ``chat.ChatPanel`` renders these and wires them to the learner.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Literal

from workbench.learner import TrainingExample

__all__ = [
    "TEMPLATE_MARKERS",
    "Conversation",
    "Turn",
    "bubble_html",
    "template_label",
    "template_name",
]


# Markers a chat template writes and the format they name; the first one found wins.
TEMPLATE_MARKERS = (
    ("<|im_start|>", "ChatML"),  # SmolLM, Qwen
    ("<|start_header_id|>", "Llama 3"),
    ("<start_of_turn>", "Gemma"),
    ("[INST]", "Llama 2 / Mistral"),
)


def template_name(template: str | None) -> str:
    """A short name for a chat template, recognised by the markers it writes.

    >>> template_name("{% for m in messages %}<|im_start|>{{ m.role }}\\n{{ m.content }}<|im_end|>{% endfor %}")
    'ChatML'
    >>> template_name("{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}")
    'Llama 3'
    >>> template_name("<start_of_turn>user"), template_name("[INST] {{ m.content }} [/INST]")
    ('Gemma', 'Llama 2 / Mistral')
    >>> template_name("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}")
    'custom'
    >>> template_name(None)
    'none'
    """
    if template is None:
        return "none"
    return next((name for marker, name in TEMPLATE_MARKERS if marker in template), "custom")


def template_label(template: str | None) -> str:
    """What the panel says about the template in use.

    >>> template_label("<|im_start|>{{ m.content }}")
    'chat template: ChatML (from the model)'
    >>> template_label(None)
    'chat template: none (raw completion only)'
    """
    if template is None:
        return "chat template: none (raw completion only)"
    return f"chat template: {template_name(template)} (from the model)"


Role = Literal["user", "assistant"]


@dataclass(eq=False)  # a turn is itself: two answers with the same text are still two answers
class Turn:
    """One bubble. An answer also remembers the example taught from it, so feedback is per answer."""

    role: Role
    content: str
    example_id: str | None = None  # the example taught from this answer; a repeat reuses it
    taught: str | None = None  # that example's target
    original: str | None = None  # the model's own answer, once a correction has replaced it


@dataclass
class Conversation:
    """The thread: an optional system prompt, then user and assistant turns in turn.

    ``raw``: the model has no template (or the person chose raw completion): each exchange is a
    prompt and its continuation, and no history is carried from one exchange to the next.

    Examples
    --------
    >>> c = Conversation(system="Answer in one word.")
    >>> for role, text in [("user", "Capital of France?"), ("assistant", "Paris"),
    ...                    ("user", "And of Spain?"), ("assistant", "Madird")]:
    ...     _ = c.add(role, text)
    >>> [m["role"] for m in c.messages_up_to(3)]
    ['system', 'user', 'assistant', 'user']
    >>> example, replaces = c.feedback(3, "Madrid", weight=2.0)
    >>> example.messages[-1], example.target, example.weight, replaces
    ({'role': 'user', 'content': 'And of Spain?'}, 'Madrid', 2.0, None)
    >>> raw = Conversation(raw=True)
    >>> _ = raw.add("user", "2 + 2 =")
    >>> raw.request()
    '2 + 2 ='
    >>> _ = raw.add("assistant", " 5")
    >>> raw.example(1, " 4").input
    '2 + 2 ='
    """

    system: str = ""
    raw: bool = False
    turns: list[Turn] = field(default_factory=list)

    def add(self, role: Role, content: str) -> Turn:
        turn = Turn(role, content)
        self.turns.append(turn)
        return turn

    def index(self, turn: Turn) -> int:
        """Where ``turn`` is (by identity); ValueError when it is not in this conversation."""
        for i, t in enumerate(self.turns):
            if t is turn:
                return i
        raise ValueError("that answer is no longer in the conversation")

    def messages_up_to(self, turn: int) -> list[dict[str, str]]:
        """What the model is shown before turn ``turn``: the system prompt, then the turns before."""
        if not 0 <= turn <= len(self.turns):
            raise IndexError(f"turn {turn} is outside a conversation of {len(self.turns)} turns")
        head = [{"role": "system", "content": self.system}] if self.system.strip() else []
        return head + [{"role": t.role, "content": t.content} for t in self.turns[:turn]]

    def request(self) -> list[dict[str, str]] | str:
        """What the next answer continues: the whole conversation, or (raw) the last prompt."""
        if self.raw:
            return self.turns[-1].content
        return self.messages_up_to(len(self.turns))

    def example(
        self, turn: int, target: str, weight: float = 1.0, id: str | None = None
    ) -> TrainingExample:
        """The example that teaches ``target`` as the reply at answer ``turn``."""
        if not 0 < turn < len(self.turns) or self.turns[turn].role != "assistant":
            raise ValueError(f"turn {turn} is not an answer")
        if self.raw:
            prompt = self.turns[turn - 1].content
            if id is None:
                return TrainingExample(prompt, target, weight)
            return TrainingExample(prompt, target, weight, id=id)
        return TrainingExample.from_chat(self.messages_up_to(turn), target, weight, id)

    def feedback(
        self, turn: int, target: str, weight: float = 1.0
    ) -> tuple[TrainingExample, str | None]:
        """The example for feedback on answer ``turn``, and the id of an earlier one it replaces.

        The target taught before reuses the answer's example id, so the store ignores the
        repeat (feedback is idempotent per answer); another target is a new example that
        replaces the earlier one.
        """
        answer = self.turns[turn]
        if answer.example_id is not None and answer.taught == target:
            return self.example(turn, target, weight, answer.example_id), None
        return self.example(turn, target, weight), answer.example_id


_BUBBLE = (
    "display:inline-block;max-width:88%;padding:3px 10px;border-radius:10px;"
    "white-space:pre-wrap;overflow-wrap:anywhere;text-align:left;line-height:1.45"
)
_BACKGROUND = {
    "user": "background:rgba(9,105,218,0.13)",
    "assistant": "background:rgba(127,127,127,0.10);border:1px solid rgba(127,127,127,0.25)",
}


def bubble_html(turn: Turn, prompt: str | None = None, streaming: bool = False) -> str:
    """A turn as a chat bubble, its text HTML-escaped; ``prompt``: a raw completion's prompt,
    shown in grey before the continuation.

    >>> "&lt;b&gt;hi&lt;/b&gt;" in bubble_html(Turn("user", "<b>hi</b>"))
    True
    >>> "(empty answer)" in bubble_html(Turn("assistant", ""))
    True
    """
    text = html.escape(turn.content)
    if not text and not streaming:
        text = "<i style='color:#888'>(empty answer)</i>"
    if prompt is not None:
        text = f"<span style='color:#666'>{html.escape(prompt)}</span><b>{text}</b>"
    cursor = "<span style='color:#0969da'>▍</span>" if streaming else ""
    who = "you" if turn.role == "user" else "model"
    if turn.original is not None:
        who = "model (corrected)"
    align = "flex-end" if turn.role == "user" else "flex-start"
    return (
        f"<div style='display:flex;flex-direction:column;align-items:{align};font-size:0.92em;"
        "padding:0 6px'>"
        f"<div style='font-size:0.75em;color:#888'>{who}</div>"
        f"<div class='wb-bubble wb-bubble-{turn.role}' style='{_BUBBLE};{_BACKGROUND[turn.role]}'>"
        f"{text}{cursor}</div></div>"
    )
