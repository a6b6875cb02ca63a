"""Chat: prompt the published model, watch the answer stream in, give feedback on it.

Generation runs on the panel's task thread (``learner.generate`` reads the published weights on
the caller's thread; on the kernel's thread it would block every other click). Streamed pieces
are gathered and pushed to the page at most every ``STREAM_INTERVAL`` seconds, because each
push re-sends the whole answer. Feedback turns the exchange into an example: 👍 keeps the
answer as the target; "Correct it" lets the person edit the answer and teaches the edit.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any

import ipywidgets as w

from workbench.learner import Learner, TrainingExample

from ._common import UI_LOCK, guarded, row, style_widget, title, weight_slider
from ._keys import CtrlEnter
from ._runtime import PanelRuntime

__all__ = ["ChatPanel"]

STREAM_INTERVAL = 0.05  # seconds between pushes of a streaming answer to the page

_SMALL = {"description_width": "90px"}


class ChatPanel(w.VBox):
    """Prompt, sampling settings, streamed answer, 👍 / "Correct it" feedback with a weight.

    Parameters
    ----------
    learner : Learner
        Uses ``generate`` and ``add_example`` only.
    """

    def __init__(self, learner: Learner) -> None:
        self.learner = learner
        self.runtime = PanelRuntime(learner, "chat")
        self.status = self.runtime.status
        self.prompt_text: str | None = None  # the prompt the current answer continues
        self.answer = ""
        self._stop = threading.Event()
        self._elapsed = 0.0

        self.prompt = w.Textarea(
            placeholder="Prompt… (Ctrl+Enter generates)",
            layout=w.Layout(width="100%", height="4.5em"),
        )
        self.max_new_tokens = w.IntSlider(
            value=64, min=1, max=512, description="max tokens", style=_SMALL
        )
        self.temperature = w.FloatSlider(
            value=0.0,
            min=0.0,
            max=2.0,
            step=0.05,
            description="temperature",
            tooltip="0 = greedy",
            style=_SMALL,
        )
        self.top_k = w.BoundedIntText(
            value=0,
            min=0,
            max=100_000,
            description="top-k",
            tooltip="0 = off",
            style=_SMALL,
            layout=w.Layout(width="170px"),
        )
        self.top_p = w.FloatSlider(
            value=1.0,
            min=0.05,
            max=1.0,
            step=0.05,
            description="top-p",
            tooltip="1 = off",
            style=_SMALL,
        )
        self.seed = w.IntText(
            value=-1,
            description="seed",
            tooltip="-1 = a new draw each time",
            style=_SMALL,
            layout=w.Layout(width="170px"),
        )
        self.generate = w.Button(description="Generate", icon="play", button_style="primary")
        self.stop = w.Button(description="Stop", icon="stop", disabled=True)
        self.output = w.HTML(
            layout=w.Layout(
                width="100%",
                min_height="4em",
                max_height="220px",
                overflow="auto",
                border="1px solid #ddd",
                padding="4px 8px",
            )
        )
        self.output.add_class("wb-compact")
        self.weight = weight_slider(width="260px")
        self.thumbs_up = w.Button(
            description="Good",
            icon="thumbs-up",  # an icon font, not an emoji: renders without an emoji font
            tooltip="Learn this answer as the target",
            disabled=True,
            layout=w.Layout(width="100px"),
        )
        self.correct = w.Button(
            description="Correct it",
            icon="pencil",
            disabled=True,
            tooltip="Edit the answer and teach the correction",
        )
        self.correction = w.Textarea(layout=w.Layout(width="100%", height="4em"))
        self.submit_correction = w.Button(
            description="Submit correction", icon="check", button_style="success"
        )
        self.cancel_correction = w.Button(description="Cancel")
        self.correction_box = w.VBox(
            [
                self.correction,
                row(self.submit_correction, self.cancel_correction),
            ],
            layout=w.Layout(display="none"),
        )
        self.ctrl_enter = CtrlEnter("wb-chat", self._on_generate)

        self.generate.on_click(self._on_generate)
        self.stop.on_click(self._on_stop)
        self.thumbs_up.on_click(self._on_thumbs_up)
        self.correct.on_click(self._on_correct)
        self.submit_correction.on_click(self._on_submit_correction)
        self.cancel_correction.on_click(self._on_cancel_correction)

        super().__init__(
            [
                style_widget(),
                title("Chat"),
                self.prompt,
                row(self.max_new_tokens, self.temperature, self.top_p),
                row(self.top_k, self.seed, self.generate, self.stop),
                self.output,
                row(self.thumbs_up, self.correct, self.weight),
                self.correction_box,
                self.status,
                self.ctrl_enter,
            ]
        )
        self.add_class("wb-panel")
        self.add_class("wb-chat")
        self._render()

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
    def _on_generate(self, _button: Any = None) -> None:
        prompt = self.prompt.value
        if not prompt.strip():
            self.status.error("type a prompt first")
            return
        if self.runtime.tasks.busy:
            self.status.error("still generating: press Stop first")
            return
        settings = self._sampling()
        self.prompt_text, self.answer = prompt, ""
        self._stop.clear()
        self._set_busy(True)
        self._render()
        self.status.show("generating…", "busy")
        pieces: list[str] = []
        last_push = [time.monotonic()]

        def on_piece(piece: str) -> bool:
            pieces.append(piece)
            now = time.monotonic()
            if now - last_push[0] >= STREAM_INTERVAL:
                last_push[0] = now
                with UI_LOCK:
                    self.answer = "".join(pieces)
                    self._render(streaming=True)
            return self._stop.is_set()

        def run() -> str:
            start = time.monotonic()
            try:
                text = self.learner.generate(prompt, stream=on_piece, **settings)
            finally:
                with UI_LOCK:
                    self._set_busy(False)
            self._elapsed = time.monotonic() - start
            return text

        def done(text: str) -> None:
            self.answer = text
            self._render()
            stopped = " (stopped)" if self._stop.is_set() else ""
            self.status.show(f"{len(text)} characters in {self._elapsed:.1f} s{stopped}", "ok")

        self.runtime.submit(run, done, "generate")

    @guarded
    def _on_stop(self, _button: Any = None) -> None:
        self._stop.set()

    def _set_busy(self, busy: bool) -> None:
        self.generate.disabled = busy
        self.stop.disabled = not busy
        has_answer = not busy and self.prompt_text is not None
        self.thumbs_up.disabled = not has_answer
        self.correct.disabled = not has_answer

    def _render(self, streaming: bool = False) -> None:
        if self.prompt_text is None:
            self.output.value = "<span style='color:#888'>the answer appears here</span>"
            return
        cursor = "<span style='color:#0969da'>▍</span>" if streaming else ""
        answer = html.escape(self.answer) or (
            "" if streaming else "<i style='color:#888'>(empty answer)</i>"
        )
        self.output.value = (
            "<div style='white-space:pre-wrap;overflow-wrap:anywhere;font-family:var(--jp-code-font-family,monospace);"
            f"font-size:0.9em'><span style='color:#666'>{html.escape(self.prompt_text)}</span>"
            f"<b>{answer}</b>{cursor}</div>"
        )

    # ------------------------------------------------------------------ feedback
    def _teach(self, target: str, how: str) -> None:
        if self.prompt_text is None:
            self.status.error("generate an answer first")
            return
        if not target:
            self.status.error("the answer is empty: use Correct it to write the target")
            return
        weight = float(self.weight.value)
        result = self.learner.add_example(TrainingExample(self.prompt_text, target, weight))
        self.status.show(f"{how}: #{result.seq} (weight {weight:g}) {result.message}", "ok")

    @guarded
    def _on_thumbs_up(self, _button: Any = None) -> None:
        self._teach(self.answer, "kept the answer")

    @guarded
    def _on_correct(self, _button: Any = None) -> None:
        self.correction.value = self.answer
        self.correction_box.layout.display = "flex"

    @guarded
    def _on_submit_correction(self, _button: Any = None) -> None:
        self._teach(self.correction.value, "correction added")
        if self.status.kind == "ok":
            self.answer = self.correction.value
            self.correction_box.layout.display = "none"
            self._render()

    @guarded
    def _on_cancel_correction(self, _button: Any = None) -> None:
        self.correction_box.layout.display = "none"

    @property
    def last_traceback(self) -> str | None:
        """The traceback of the panel's last error (for a bug report)."""
        return self.runtime.last_traceback

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until generation has finished (tests, scripts)."""
        return self.runtime.wait(timeout)

    def close(self) -> None:
        # Widget.__del__ calls close(), also on an object whose __init__ failed half-way.
        if (runtime := getattr(self, "runtime", None)) is not None:
            runtime.close()
        super().close()
