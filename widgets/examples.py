"""Examples: type an input (and optionally a target), weigh it, submit; see recent ones; undo.

Undo takes back the newest submission of the session (``_history.SubmissionHistory``, shared
with the Chat panel in a Workbench), whichever panel added it, and says which.

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

from ._common import UI_LOCK, guarded, html_table, number_input, row, weight_slider
from ._controls import button
from ._history import HistoryView, Submission, SubmissionHistory, undo_newest
from ._keys import CtrlEnter
from ._runtime import RuntimeMembers

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
    return html_table(
        ("#", "input", "target", "weight", "status", "added"),
        rows,
        "class='wb-examples-table' style='width:100%;font-size:0.85em;border-collapse:collapse'",
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
    history : SubmissionHistory, optional
        The session's submissions, shared with the Chat panel in a Workbench; Undo takes back
        the newest of them. None: the panel keeps its own.
    """

    def __init__(
        self,
        learner: Learner,
        auto_refresh: bool = True,
        interval: float = 1.0,
        limit: int = 8,
        history: SubmissionHistory | None = None,
    ) -> None:
        self._connect(learner, "examples")
        self.limit = limit
        self.history = history if history is not None else SubmissionHistory()
        self._table_html = ""

        # Widths "auto", not "100%": the 2 px margin ipywidgets puts around each widget would
        # stick out of the panel by 4 px and make it scroll sideways.
        self.input = w.Textarea(
            placeholder="Type an example… (Ctrl+Enter submits)",
            layout=w.Layout(width="auto", height="5.5em"),
        )
        self.target = w.Textarea(
            placeholder="Optional target: the continuation the model should learn",
            layout=w.Layout(width="auto", height="3.5em"),
        )
        self.weight = weight_slider(flex="1 1 200px", min_width="180px", max_width="360px")
        self.default_weight = float(self.weight.value)  # where the weight returns after each use
        self.weight_box = number_input(self.weight, "weight", self.status.error)
        self.submit = button(
            "Submit", "paper-plane", "110px", button_style="primary", tooltip="Ctrl+Enter"
        )
        self.undo = button(
            "Undo last",
            "undo",
            "110px",
            tooltip="Remove the newest example submitted in this session (from any panel)",
        )
        self.table = w.HTML(layout=w.Layout(max_height="260px", overflow="auto"))
        self.table.add_class("wb-compact")
        self.history_view = HistoryView(self.history, self.undo)
        self.ctrl_enter = CtrlEnter("wb-examples", self._on_submit)

        self.submit.on_click(self._on_submit)
        self.undo.on_click(self._on_undo)

        self._lay_out(
            "Examples",
            [
                self.input,
                self.target,
                row(self.weight, self.weight_box, self.submit, self.undo),
                self.status,
                self.history_view,
                self.table,
                self.ctrl_enter,
            ],
        )
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
            self.history.add(Submission(result.id, result.seq, "examples", text))
        self.input.value = ""
        self.target.value = ""
        self.weight.value = self.default_weight  # a weight is for one example, not sticky
        self.status.show(f"#{result.seq} {result.message}", "ok")
        self.refresh()

    @guarded
    def _on_undo(self, _button: Any = None) -> None:
        undo_newest(self.history, self.runtime, self.refresh)
        self.sync_history()

    @guarded
    def refresh(self) -> None:
        """Re-read the recent examples and their status."""
        value = examples_table(self.learner.recent_examples(self.limit))
        if value != self._table_html:  # an unchanged table costs no message to the browser
            self._table_html = value
            with UI_LOCK:
                self.table.value = value
        self.sync_history()

    def sync_history(self) -> None:
        """Show the session's newest submissions; Undo is enabled while there is one."""
        self.history_view.sync()
