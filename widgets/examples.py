"""Examples: type an input (and optionally a target), weigh it, submit; see recent ones; undo.

Submitting calls ``learner.add_example`` on the kernel's thread: it only commits the example to
the session's SQLite log and queues it, so it returns in milliseconds even while the learner
trains. Undo waits for the learner's worker (it drops the example from the buffers), so it runs
on the panel's task thread.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from workbench.learner import Learner, TrainingExample

from ._common import UI_LOCK, guarded, row, style_widget, title, weight_slider
from ._keys import CtrlEnter
from ._runtime import PanelRuntime, RuntimeMembers

if TYPE_CHECKING:
    from workbench.store import ExampleRecord  # what Learner.recent_examples returns

__all__ = ["ExamplesPanel", "examples_table"]

_STATUS_COLORS = {"stored": "#9a6700", "trained": "#1a7f37", "removed": "#888"}


def _clip(text: str | None, n: int = 60) -> str:
    if text is None:
        return "<span style='color:#888'>—</span>"
    one_line = text.replace("\n", "⏎ ")
    short = one_line if len(one_line) <= n else one_line[: n - 1] + "…"
    return f"<span title='{html.escape(text)}'>{html.escape(short)}</span>"


def examples_table(records: Sequence[ExampleRecord]) -> str:
    """Recent examples (newest first) as an HTML table with their status.

    >>> examples_table([])
    "<div style='color:#555;font-size:0.9em'>no examples yet</div>"
    """
    if not records:
        return "<div style='color:#555;font-size:0.9em'>no examples yet</div>"
    rows = []
    for r in reversed(records):
        color = _STATUS_COLORS.get(r.status, "#555")
        status = r.status + (f" ×{r.trained_count}" if r.trained_count > 1 else "")
        style = "text-decoration:line-through;color:#888" if r.status == "removed" else ""
        when = dt.datetime.fromtimestamp(r.created).strftime("%H:%M:%S")
        rows.append(
            f"<tr style='{style}'><td>{r.seq}</td><td>{_clip(r.input)}</td>"
            f"<td>{_clip(r.target)}</td><td style='text-align:right'>{r.weight:g}</td>"
            f"<td style='color:{color}'>{html.escape(status)}</td><td>{when}</td></tr>"
        )
    head = "".join(
        f"<th style='text-align:left;padding-right:0.8em'>{h}</th>"
        for h in ("#", "input", "target", "weight", "status", "added")
    )
    return (
        "<table class='wb-examples-table' style='width:100%;font-size:0.85em;"
        f"border-collapse:collapse'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}"
        "</tbody></table>"
    )


class ExamplesPanel(RuntimeMembers, w.VBox):
    """Input, optional target, weight (0.1–10), Submit (or Ctrl+Enter), recent examples, Undo.

    Parameters
    ----------
    learner : Learner
    auto_refresh : bool
        Refresh the table's statuses in the background; tests pass False and call ``refresh()``.
    limit : int
        Rows in the table of recent examples.
    """

    def __init__(
        self, learner: Learner, auto_refresh: bool = True, interval: float = 1.0, limit: int = 8
    ) -> None:
        self.learner = learner
        self.runtime = PanelRuntime(learner, "examples")
        self.status = self.runtime.status
        self.limit = limit
        self.submitted: list[str] = []  # ids this panel added, newest last: what Undo removes
        self._table_html = ""

        self.input = w.Textarea(
            placeholder="Type an example… (Ctrl+Enter submits)",
            layout=w.Layout(width="100%", height="5.5em"),
        )
        self.target = w.Textarea(
            placeholder="Optional target: the continuation the model should learn",
            layout=w.Layout(width="100%", height="3.5em"),
        )
        self.weight = weight_slider(flex="1 1 200px", min_width="180px", max_width="360px")
        self.submit = w.Button(
            description="Submit",
            icon="paper-plane",
            button_style="primary",
            tooltip="Ctrl+Enter",
            layout=w.Layout(width="110px"),
        )
        self.undo = w.Button(
            description="Undo last",
            icon="undo",
            tooltip="Remove the last example",
            layout=w.Layout(width="110px"),
        )
        self.table = w.HTML(layout=w.Layout(max_height="260px", overflow="auto"))
        self.table.add_class("wb-compact")
        self.ctrl_enter = CtrlEnter("wb-examples", self._on_submit)

        self.submit.on_click(self._on_submit)
        self.undo.on_click(self._on_undo)

        super().__init__(
            [
                style_widget(),
                title("Examples"),
                self.input,
                self.target,
                row(self.weight, self.submit, self.undo),
                self.status,
                self.table,
                self.ctrl_enter,
            ]
        )
        self.add_class("wb-panel")
        self.add_class("wb-examples")
        self.refresh()
        self.poller = self.runtime.poll(self.refresh, interval, start=auto_refresh)

    @guarded
    def _on_submit(self, _button: Any = None) -> None:
        text = self.input.value
        if not text.strip():
            self.status.error("type an example first")
            return
        target = self.target.value if self.target.value.strip() else None
        result = self.learner.add_example(TrainingExample(text, target, float(self.weight.value)))
        if not result.duplicate:
            self.submitted.append(result.id)
        self.input.value = ""
        self.target.value = ""
        self.status.show(f"#{result.seq} {result.message}", "ok")
        self.refresh()

    @guarded
    def _on_undo(self, _button: Any = None) -> None:
        if not self.submitted:
            self.status.error("nothing to undo: this panel has not added an example")
            return
        example_id = self.submitted.pop()
        self.status.show("removing the last example…", "busy")

        def done(removed: bool) -> None:
            if removed:
                self.status.show("removed the last example; it will not be trained on again", "ok")
            else:
                self.status.error("that example was already removed")
            self.refresh()

        self.runtime.submit(lambda: self.learner.remove_example(example_id), done, "undo")

    @guarded
    def refresh(self) -> None:
        """Re-read the recent examples and their status."""
        value = examples_table(self.learner.recent_examples(self.limit))
        if value != self._table_html:  # an unchanged table costs no message to the browser
            self._table_html = value
            with UI_LOCK:
                self.table.value = value
        self.undo.disabled = not self.submitted
