"""Watch list: pinned prompts and whether the model still answers them as when they were pinned.

The panel only renders ``workbench.watch.WatchList.results()`` and forwards pin / unpin /
accept; the watch list re-answers on its own thread after every update (raw completion; a
question ending in "?" goes through the chat template when the model has one), so nothing here
waits for the model.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import ipywidgets as w

from workbench.learner import Learner
from workbench.watch import WatchList, WatchResult

from ._common import SPINNER, UI_LOCK, guarded, html_table, row
from ._controls import button
from ._runtime import RuntimeMembers

__all__ = ["WatchPanel", "watch_summary", "watch_table"]

_CHANGED = "#cf222e"
_SAME = "#1a7f37"
_PENDING = "#888"


def _text(text: str | None, n: int = 48) -> str:
    """An answer on one line, shortened, the full text in the tooltip; None is a dash.

    >>> _text(" Paris\\nis")
    "<span title=' Paris\\nis'> Paris⏎ is</span>"
    """
    if text is None:
        return f"<span style='color:{_PENDING}'>—</span>"
    one_line = text.replace("\n", "⏎ ")
    short = one_line if len(one_line) <= n else one_line[: n - 1] + "…"
    return f"<span title='{html.escape(text)}'>{html.escape(short)}</span>"


def watch_summary(results: Sequence[WatchResult]) -> str:
    """One line: how many answers changed since pinning (or that they are being answered).

    >>> watch_summary([])
    'no prompts pinned'
    >>> watch_summary([WatchResult("a", "x", "y", True, 2), WatchResult("b", "x", "x", False, 2)])
    '1 of 2 answers changed since pinning'
    >>> watch_summary([WatchResult("a", None, None, False, None)])
    'no answer changed since pinning (1 being answered)'
    """
    if not results:
        return "no prompts pinned"
    changed = sum(r.changed for r in results)
    pending = sum(r.answer is None and r.error is None for r in results)
    if changed:
        text = f"{changed} of {len(results)} answer{'s' if len(results) > 1 else ''} changed since pinning"
    else:
        text = "no answer changed since pinning"
    return text + (f" ({pending} being answered)" if pending else "")


def watch_table(results: Sequence[WatchResult]) -> str:
    """Pinned prompts as HTML rows: a mark (changed / same / pending), prompt, then and now.

    >>> "wb-watch-changed" in watch_table([WatchResult("a", "x", "y", True, 1)])
    True
    >>> watch_table([])
    "<div style='color:#555;font-size:0.9em'>pin a prompt to watch its answer</div>"
    """
    if not results:
        return "<div style='color:#555;font-size:0.9em'>pin a prompt to watch its answer</div>"
    rows = []
    for r in results:
        if r.error is not None and r.answer is None:
            mark = f"<span style='color:{_CHANGED}' title='{html.escape(r.error)}'>error</span>"
            cls = "wb-watch-error"
        elif r.answer is None:
            mark = f"<span style='color:{_PENDING}' title='being answered'>{SPINNER}</span>"
            cls = "wb-watch-pending"
        elif r.changed:
            mark = f"<b style='color:{_CHANGED}'>✗ changed</b>"
            cls = "wb-watch-changed"
        else:
            mark, cls = f"<span style='color:{_SAME}'>✓ same</span>", "wb-watch-same"
        now = _text(r.answer) if not r.changed else f"<b>{_text(r.answer)}</b>"
        via = " <span style='color:#888'>(chat)</span>" if r.mode == "chat" else ""
        rows.append(
            f"<tr class='{cls}'><td style='white-space:nowrap'>{mark}</td>"
            f"<td>{_text(r.prompt)}{via}</td><td>{_text(r.baseline)}</td><td>{now}</td></tr>"
        )
    return html_table(
        ("", "prompt", "when pinned", "now"),
        rows,
        "class='wb-examples-table wb-watch-table' style='width:100%;font-size:0.85em;"
        "border-collapse:collapse;table-layout:fixed;word-break:break-word'",
        colgroup="<colgroup><col style='width:6.5em'><col style='width:36%'><col><col></colgroup>",
    )


class WatchPanel(RuntimeMembers, w.VBox):
    """Pin prompts; see each one's answer when pinned and now, changed ones marked and counted.

    Parameters
    ----------
    learner : Learner
    watch : WatchList, optional
        The list to show; None creates one (with the default prompts) that the panel closes.
    auto_refresh : bool
        Re-render in the background; tests pass False and call ``refresh()``.
    background : bool
        For a list the panel creates: re-answer after updates on the list's own thread (tests
        pass False and call ``watch.refresh_now()``).
    """

    def __init__(
        self,
        learner: Learner,
        watch: WatchList | None = None,
        auto_refresh: bool = True,
        interval: float = 1.0,
        background: bool = True,
    ) -> None:
        self._connect(learner, "watch")
        self._owns_watch = watch is None
        self.watch = watch if watch is not None else WatchList(learner, background=background)
        self._table_html = ""
        self._summary_html = ""

        self.prompt = w.Text(
            placeholder="A prompt to watch, e.g. The capital of Italy is",
            layout=w.Layout(flex="1 1 220px", min_width="160px"),
        )
        self.pin = button("Pin", "thumb-tack", "80px")
        self.pinned = w.Dropdown(
            options=[],
            description="pinned",
            style={"description_width": "50px"},
            layout=w.Layout(flex="1 1 220px", min_width="160px"),
        )
        self.unpin = button("Unpin", "times", "80px")
        self.accept = button(
            "Accept answers", "check", "150px", tooltip="Take today's answers as the new baseline"
        )
        self.summary = w.HTML()
        self.table = w.HTML(layout=w.Layout(max_height="320px", overflow="auto"))
        self.table.add_class("wb-compact")

        self.pin.on_click(self._on_pin)
        self.unpin.on_click(self._on_unpin)
        self.accept.on_click(self._on_accept)

        self._lay_out(
            "Watch list",
            [
                w.HTML(
                    "<div style='color:#555;font-size:0.85em'>After every update the model "
                    f"answers these again ({self.watch.max_new_tokens} tokens, greedy); an "
                    "answer that differs from when it was pinned is marked.</div>"
                ),
                row(self.prompt, self.pin),
                row(self.pinned, self.unpin, self.accept),
                self.summary,
                self.status,
                self.table,
            ],
        )
        self.refresh()
        self.poller = self.runtime.poll(self.refresh, interval, start=auto_refresh)

    @guarded
    def _on_pin(self, _button: Any = None) -> None:
        prompt = self.prompt.value
        if not prompt.strip():
            self.status.error("type a prompt to pin first")
            return
        if self.watch.pin(prompt):
            self.status.show(f"pinned {prompt!r}; its answer now is its baseline", "ok")
        else:
            self.status.show(f"{prompt!r} is already pinned", "info")
        with UI_LOCK:
            self.prompt.value = ""
        self.refresh()

    @guarded
    def _on_unpin(self, _button: Any = None) -> None:
        prompt = self.pinned.value
        if not prompt:
            self.status.error("nothing pinned to unpin")
            return
        self.watch.unpin(prompt)
        self.status.show(f"unpinned {prompt!r}", "ok")
        self.refresh()

    @guarded
    def _on_accept(self, _button: Any = None) -> None:
        self.watch.rebaseline()
        self.status.show("today's answers are the new baselines", "ok")
        self.refresh()

    @property
    def changed_count(self) -> int:
        return self.watch.changed_count

    @guarded
    def refresh(self) -> None:
        """Re-render the watch list from its latest results (cheap: no model call)."""
        results = self.watch.results()
        table, summary = watch_table(results), watch_summary(results)
        color = _CHANGED if any(r.changed for r in results) else "#555"
        summary = (
            f"<span class='wb-watch-summary' style='color:{color}'>{html.escape(summary)}</span>"
        )
        prompts = tuple(r.prompt for r in results)
        with UI_LOCK:
            if table != self._table_html:  # unchanged HTML costs no message to the browser
                self._table_html = table
                self.table.value = table
            if summary != self._summary_html:
                self._summary_html = summary
                self.summary.value = summary
            if tuple(self.pinned.options) != prompts:
                chosen = self.pinned.value
                self.pinned.options = prompts
                self.pinned.value = (
                    chosen if chosen in prompts else (prompts[0] if prompts else None)
                )
            self.unpin.disabled = not prompts

    def close(self) -> None:
        if getattr(self, "_owns_watch", False) and (watch := getattr(self, "watch", None)):
            watch.close()
        super().close()
