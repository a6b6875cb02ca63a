"""Chat: a conversation with the published model, answers streamed, feedback on any answer.

The panel shows the conversation as a thread of bubbles. With a chat template (an instruct
model) each reply is ``learner.chat(conversation)``; without one, or when the person switches to
raw completion, each exchange is a ``learner.generate(prompt)`` of its own. Generation runs on
the panel's task thread (it reads the published weights on the caller's thread; on the kernel's
it would block every other click). Streamed pieces reach the last bubble at most every
``STREAM_INTERVAL`` seconds, because each push re-sends the whole bubble.

Feedback turns an answer into an example: 👍 keeps the answer as the target, "Correct it"
teaches the person's edit. In chat form the conversation up to that answer is the example's
``messages``; in raw form the exchange's prompt is its ``input``. An answer keeps the id of the
example taught from it: a second 👍 is the same example (the store ignores a repeated id), a
correction after a 👍 replaces it. The weight returns to its default after each use.

The boundary: what a conversation is and what feedback on an answer becomes (``Conversation``,
``template_name``) are plain objects here; the panel wires them to widgets and to the learner's
``chat``, ``chat_template``, ``generate``, ``add_example`` and ``remove_example``.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as w

from workbench.learner import Learner

from ._chat_feedback import ChatFeedback
from ._common import UI_LOCK, guarded, number_input, row, weight_slider
from ._controls import button, labelled
from ._conversation import Conversation, Turn, bubble_html, template_label, template_name
from ._history import HistoryView, SubmissionHistory
from ._keys import CtrlEnter
from ._runtime import RuntimeMembers
from ._turn_views import AnswerView, TurnView

__all__ = ["ChatPanel", "Conversation", "Turn", "bubble_html", "template_label", "template_name"]

STREAM_INTERVAL = 0.05  # seconds between pushes of a streaming answer to the page

_LABEL_WIDTH = "90px"  # of the sampling controls' descriptions


def _sampling_slider(
    description: str, value: float, low: float, high: float, off: str
) -> w.FloatSlider:
    """A sampling parameter in steps of 0.05; ``off`` (its tooltip) says which value is off."""
    return labelled(
        w.FloatSlider,
        description,
        _LABEL_WIDTH,
        value=value,
        min=low,
        max=high,
        step=0.05,
        tooltip=off,
    )


class ChatPanel(ChatFeedback, RuntimeMembers, w.VBox):
    """A conversation with the model: thread, system prompt, New chat, Regenerate, sampling,
    and 👍 / "Correct it" under every answer, with a weight and an Undo for the session's newest submission.

    Parameters
    ----------
    learner : Learner
        Uses ``chat``, ``chat_template``, ``generate``, ``add_example`` and ``remove_example``.

    Attributes
    ----------
    conversation : Conversation
        The thread shown; ``turn_views`` holds one view per turn, in order.
    taught : list of (Turn, str)
        The answers this panel taught and their example ids, newest last.
    history : SubmissionHistory
        The session's submissions (shared in a Workbench); Undo takes back the newest.
    """

    def __init__(self, learner: Learner, history: SubmissionHistory | None = None) -> None:
        self._connect(learner, "chat")
        # The session's submissions (shared with the Examples panel in a Workbench): Undo
        # takes back the newest of them, whichever panel added it.
        self.history = history if history is not None else SubmissionHistory()
        self.template = learner.chat_template()
        self.conversation = Conversation(raw=self.template is None)
        self.turn_views: list[TurnView] = []
        self.taught: list[tuple[Turn, str]] = []
        self._raw_chosen = False  # the person picked raw completion; otherwise it follows the model
        self._correcting: Turn | None = None
        self._syncing = False  # the panel itself is setting the mode toggle
        self._stop = threading.Event()
        self._elapsed = 0.0

        self.template_info = w.HTML()
        self.mode = w.ToggleButtons(
            options=[("chat", "chat"), ("raw completion", "raw")],
            value="raw" if self.conversation.raw else "chat",
            tooltips=["Answer the conversation through the chat template", "Continue the prompt"],
            style={"button_width": "auto"},
        )
        self.new_chat = button("New chat", "plus", "auto")
        self.system = w.Textarea(
            placeholder="System prompt (optional; New chat to change it)",
            layout=w.Layout(width="auto", height="2.6em"),
        )
        self.empty = w.HTML("<span style='color:#888'>the conversation appears here</span>")
        # column-reverse (children newest first) keeps the scroll at the newest turn.
        self.thread = w.VBox(
            [self.empty],
            layout=w.Layout(
                width="100%",
                min_height="4em",
                max_height="340px",
                overflow="auto",
                flex_flow="column-reverse",
                border="1px solid #ddd",
                padding="4px 8px",
            ),
        )
        self.thread.add_class("wb-chat-thread")
        self.prompt = w.Textarea(layout=w.Layout(width="auto", height="4.5em"))
        self.send = w.Button(button_style="primary", layout=w.Layout(width="auto"))
        self.regenerate = button(
            "Regenerate", "refresh", "auto", tooltip="Answer the last message again", disabled=True
        )
        self.stop = w.Button(description="Stop", icon="stop", disabled=True)
        self.max_new_tokens = labelled(
            w.IntSlider, "max tokens", _LABEL_WIDTH, value=64, min=1, max=512
        )
        self.temperature = _sampling_slider("temperature", 0.0, 0.0, 2.0, "0 = greedy")
        self.top_k = labelled(
            w.BoundedIntText,
            "top-k",
            _LABEL_WIDTH,
            "170px",
            value=0,
            min=0,
            max=100_000,
            tooltip="0 = off",
        )
        self.top_p = _sampling_slider("top-p", 1.0, 0.05, 1.0, "1 = off")
        self.seed = labelled(
            w.IntText, "seed", _LABEL_WIDTH, "170px", value=-1, tooltip="-1 = a new draw each time"
        )
        self.weight = weight_slider(width="260px")
        self.default_weight = float(self.weight.value)  # where the weight returns after each use
        self.weight_box = number_input(self.weight, "weight", self.status.error)
        self.undo = button(
            "Undo last",
            "undo",
            "auto",
            tooltip="Remove the newest example submitted in this session (from any panel)",
            disabled=True,
        )
        self.history_view = HistoryView(self.history, self.undo)
        self.correction_title = w.HTML()
        self.correction = w.Textarea(layout=w.Layout(width="auto", height="4em"))
        self.submit_correction = w.Button(
            description="Submit correction", icon="check", button_style="success"
        )
        self.cancel_correction = w.Button(description="Cancel")
        self.correction_box = w.VBox(
            [
                self.correction_title,
                self.correction,
                row(self.submit_correction, self.cancel_correction),
            ],
            layout=w.Layout(display="none"),
        )
        self.ctrl_enter = CtrlEnter("wb-chat", self._on_send)

        self.mode.observe(self._on_mode, "value")
        self.new_chat.on_click(self._on_new_chat)
        self.send.on_click(self._on_send)
        self.regenerate.on_click(self._on_regenerate)
        self.stop.on_click(self._on_stop)
        self.undo.on_click(self._on_undo)
        self.submit_correction.on_click(self._on_submit_correction)
        self.cancel_correction.on_click(self._on_cancel_correction)

        self._lay_out(
            "Chat",
            [
                row(self.template_info, self.mode, self.new_chat),
                self.system,
                self.thread,
                row(self.weight, self.weight_box, self.undo),
                self.history_view,
                self.correction_box,
                self.prompt,
                row(self.send, self.regenerate, self.stop),
                row(self.max_new_tokens, self.temperature, self.top_p),
                row(self.top_k, self.seed),
                self.status,
                self.ctrl_enter,
            ],
        )
        self.sync_history()
        self._show_mode()
        self._set_busy(False)

    # ------------------------------------------------------------------ the conversation
    @property
    def answer(self) -> str:
        """The last answer's text ("" before the first)."""
        answers = [t for t in self.conversation.turns if t.role == "assistant"]
        return answers[-1].content if answers else ""

    def answer_view(self, n: int = -1) -> AnswerView:
        """The view of the ``n``-th answer (``-1``: the last), with its Good / Correct it buttons."""
        views = [v for v in self.turn_views if isinstance(v, AnswerView)]
        return views[n]

    @guarded
    def refresh(self) -> None:
        """Re-read the model's chat template (new weights may bring or drop one)."""
        template = self.learner.chat_template()
        if template == self.template or self.runtime.tasks.busy:
            return
        self.template = template
        if template is None and not self.conversation.raw:
            self._set_mode(raw=True)
            self.status.show("the model has no chat template: raw completion (new chat)", "info")
        elif template is not None and not self._raw_chosen and not self.conversation.turns:
            self._set_mode(raw=False)
        self._show_mode()
        self._set_busy(False)

    def _set_mode(self, raw: bool) -> None:
        self._set_toggle(raw)
        self._start_over(raw)

    def _set_toggle(self, raw: bool) -> None:
        self._syncing = True
        try:
            self.mode.value = "raw" if raw else "chat"
        finally:
            self._syncing = False

    @guarded
    def _on_mode(self, change: dict[str, Any]) -> None:
        raw = change["new"] == "raw"
        if self._syncing or raw == self.conversation.raw:
            return
        if self.runtime.tasks.busy or (not raw and self.template is None):
            self._set_toggle(self.conversation.raw)  # back to what is running
            self.status.error(
                "still generating: press Stop first"
                if self.runtime.tasks.busy
                else "the model has no chat template: only raw completion"
            )
            return
        self._raw_chosen = raw
        self._start_over(raw)
        self.status.show(
            "raw completion: each prompt is continued on its own (new chat)"
            if raw
            else f"chat through the {template_name(self.template)} template (new chat)",
            "info",
        )

    @guarded
    def _on_new_chat(self, _button: Any = None) -> None:
        if self.runtime.tasks.busy:
            self.status.error("still generating: press Stop first")
            return
        self._start_over(self.conversation.raw)
        self.status.show("new chat", "info")

    def _start_over(self, raw: bool) -> None:
        for view in self.turn_views:
            view.close()
        self.turn_views = []
        self.conversation = Conversation(raw=raw)
        self._close_correction()
        self._show_thread()
        self._show_mode()
        self._set_busy(False)

    def _show_mode(self) -> None:
        raw = self.conversation.raw
        self.template_info.value = (
            f"<span style='color:#555;font-size:0.9em'>{html.escape(template_label(self.template))}"
            "</span>"
        )
        self.send.description = "Generate" if raw else "Send"
        self.send.icon = "play" if raw else "paper-plane"
        self.prompt.placeholder = (
            "Prompt… (Ctrl+Enter generates)" if raw else "Message… (Ctrl+Enter sends)"
        )
        # Raw completion has no system prompt, and Generate again is its Regenerate.
        self.system.layout.display = "none" if raw else None
        self.regenerate.layout.display = "none" if raw else None

    def _show_thread(self) -> None:
        views = [
            v for v in self.turn_views if not (self.conversation.raw and v.turn.role == "user")
        ]
        self.thread.children = tuple(reversed(views)) if views else (self.empty,)

    def _add_view(self, turn: Turn) -> TurnView:
        view: TurnView
        if turn.role == "user":
            view = TurnView(turn)
        else:
            conv = self.conversation
            prompt = conv.turns[conv.index(turn) - 1].content if conv.raw else None
            answer = AnswerView(turn, prompt)
            answer.good.on_click(lambda _b: self._on_good(turn))
            answer.correct.on_click(lambda _b: self._on_correct(turn))
            if turn.example_id is not None:  # an answer put back after a failed Regenerate
                answer.show_note("taught")
            view = answer
        self.turn_views.append(view)
        self._show_thread()
        return view

    def _drop_last(self) -> Turn:
        turn = self.conversation.turns.pop()
        self.turn_views.pop().close()
        if self._correcting is turn:
            self._close_correction()
        self._show_thread()
        return turn

    # ------------------------------------------------------------------ generation
    def _sampling(self) -> dict[str, Any]:
        return {
            "max_new_tokens": int(self.max_new_tokens.value),
            "temperature": float(self.temperature.value),
            "top_k": int(self.top_k.value) or None,
            "top_p": float(self.top_p.value) if self.top_p.value < 1 else None,
            "seed": int(self.seed.value) if self.seed.value >= 0 else None,
        }

    @guarded
    def _on_send(self, _button: Any = None) -> None:
        if self.runtime.tasks.busy:
            self.status.error("still generating: press Stop first")
            return
        self.refresh()  # a panel on its own has no poller to notice new weights
        conv = self.conversation
        text = self.prompt.value
        if not text.strip():
            self.status.error("type a prompt first" if conv.raw else "type a message first")
            return
        if not conv.turns:
            conv.system = "" if conv.raw else self.system.value
        self._add_view(conv.add("user", text))
        if not conv.raw:
            self.prompt.value = ""

        def back_to_before() -> None:
            self._drop_last()
            if not conv.raw and not self.prompt.value:
                self.prompt.value = text  # to fix and send again

        self._answer(back_to_before)

    @guarded
    def _on_regenerate(self, _button: Any = None) -> None:
        if self.runtime.tasks.busy:
            self.status.error("still generating: press Stop first")
            return
        turns = self.conversation.turns
        if not turns or turns[-1].role != "assistant":
            self.status.error("nothing to regenerate: send a message first")
            return
        old = self._drop_last()

        def restore() -> None:
            self.conversation.turns.append(old)
            self._add_view(old)

        self._answer(restore)

    def _answer(self, on_failure: Callable[[], None]) -> None:
        """Answer the conversation's last user turn into a new, streaming assistant bubble;
        on failure drop the bubble and call ``on_failure`` (undo what led here)."""
        conv = self.conversation
        request, settings = conv.request(), self._sampling()
        answer = conv.add("assistant", "")
        view = self._add_view(answer)
        view.render(streaming=True)
        self._stop.clear()
        self._set_busy(True)
        self.status.show("generating…", "busy")
        pieces: list[str] = []
        last_push = [time.monotonic()]

        def on_piece(piece: str) -> bool:
            pieces.append(piece)
            now = time.monotonic()
            if now - last_push[0] >= STREAM_INTERVAL:
                last_push[0] = now
                with UI_LOCK:
                    answer.content = "".join(pieces)
                    view.render(streaming=True)
            return self._stop.is_set()

        def run() -> str:
            start = time.monotonic()
            try:
                if isinstance(request, str):
                    text = self.learner.generate(request, stream=on_piece, **settings)
                else:
                    text = self.learner.chat(request, stream=on_piece, **settings)
            except Exception:
                with UI_LOCK:
                    self._drop_last()
                    on_failure()
                    self._set_busy(False)
                raise
            self._elapsed = time.monotonic() - start
            return text

        def done(text: str) -> None:
            answer.content = text
            view.render()
            self._set_busy(False)
            stopped = " (stopped)" if self._stop.is_set() else ""
            self.status.show(f"{len(text)} characters in {self._elapsed:.1f} s{stopped}", "ok")

        self.runtime.submit(run, done, "generate" if isinstance(request, str) else "chat")

    @guarded
    def _on_stop(self, _button: Any = None) -> None:
        self._stop.set()

    def _set_busy(self, busy: bool) -> None:
        turns = self.conversation.turns
        self.send.disabled = self.new_chat.disabled = busy
        self.stop.disabled = not busy
        self.regenerate.disabled = busy or not turns or turns[-1].role != "assistant"
        self.mode.disabled = busy or self.template is None
        self.system.disabled = busy or bool(turns)

    def sync_history(self) -> None:
        """Show the session's newest submissions; Undo is enabled while there is one."""
        self.history_view.sync()

    def close(self) -> None:
        # Widget.__del__ calls close(), also on an object whose __init__ failed half-way.
        for view in getattr(self, "turn_views", []):
            view.close()
        super().close()
