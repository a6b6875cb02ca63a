"""Labeling: the model suggests a label for each item, the person answers, the learner learns.

A skin over ``workbench.labeling.LabelingSession``: the item, one button per label with the
model's calibrated score as a bar (its suggestion highlighted), accept / reject / skip / undo,
progress, the running agreement of suggestion and answer as a small curve, and the last 10
answers, each editable. Keys 1–9 pick a label, ``a`` accepts, ``x`` rejects, space skips and
backspace undoes, **only while the panel has focus** (click it first): JupyterLab keeps its own
command-mode shortcuts everywhere else.

An answer is stored by ``session.answer`` on the kernel's thread (an SQLite commit and a queued
example: milliseconds, so a key press answers at once). The next item is chosen on a thread of
its own from the scores already computed and shown at once with them (a caption says which
model version gave them: while the learner trains, usually the one before); the task thread
then rescores it on the current weights and, while the person reads, scores candidates for the
next pick (stopping as soon as a key asks for it). Undo waits for the learner's worker there too.
"""

from __future__ import annotations

import datetime as dt
import html
import time
from collections.abc import Callable, Sequence
from typing import Any

import anywidget
import ipywidgets as w
import traitlets

from workbench.labeling import LabelingSession, Suggestion
from workbench.labeling.table import Answer

from ._common import UI_LOCK, TaskRunner, guarded, html_table, row
from ._controls import button
from ._runtime import RuntimeMembers

__all__ = ["LabelKeys", "LabelingPanel", "agreement_svg", "answers_table", "score_bars"]

_KEYS_ESM = """
function render({ model, el }) {
  const onKey = (e) => {
    const root = el.closest("." + model.get("scope"));
    const active = document.activeElement;
    if (!root || !active || !root.contains(active)) return;  // the panel must have focus
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT")) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const key = e.key === " " ? "space" : e.key;
    if (!/^[1-9]$/.test(key) && !["a", "x", "space", "Backspace"].includes(key)) return;
    e.preventDefault();
    e.stopPropagation();
    model.send({ event: "key", key });
  };
  // The panel takes focus when clicked; keys go to it only then.
  const root = el.closest("." + model.get("scope"));
  if (root && !root.hasAttribute("tabindex")) root.setAttribute("tabindex", "0");
  // Capture phase: JupyterLab's command-mode shortcuts (a, x, 1, space) sit further down.
  document.addEventListener("keydown", onKey, true);
  return () => document.removeEventListener("keydown", onKey, true);
}
export default { render };
"""

KEYS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "x", "space", "Backspace")


class LabelKeys(anywidget.AnyWidget):
    """Reports 1–9, a, x, space and backspace pressed while focus is inside ``.{scope}``."""

    _esm = traitlets.Unicode(_KEYS_ESM).tag(sync=True)
    scope = traitlets.Unicode("wb-labeling").tag(sync=True)

    def __init__(self, scope: str, on_key: Callable[[str], Any], **kwargs: Any) -> None:
        super().__init__(scope=scope, **kwargs)
        self.layout.display = "none"
        self._on_key = on_key
        self.on_msg(self._handle)

    def press(self, key: str) -> None:
        """What the key does; tests call it directly."""
        self._on_key(key)

    def _handle(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("event") == "key":
            key = content.get("key")
            if isinstance(key, str) and key in KEYS:
                self.press(key)


def score_bars(s: Suggestion | None, labels: Sequence[str]) -> str:
    """One bar per label, its calibrated probability as the width; the suggestion in blue.

    >>> score_bars(None, ["a"])
    "<div style='color:#555'>—</div>"
    """
    if s is None:
        return "<div style='color:#555'>—</div>"
    out = [
        f"<div class='wb-label-version' style='color:#555;font-size:0.8em'>"
        f"scores of model v{s.version}</div>"
    ]
    for i, label in enumerate(labels):
        p = s.scores[label]
        color = "#0969da" if label == s.label else "#8c959f"
        out.append(
            f"<div class='wb-label-bar' style='display:flex;align-items:center;gap:0.5em'>"
            f"<span style='width:9em'>{i + 1}&nbsp;{html.escape(label)}</span>"
            f"<span style='flex:1;background:#eaeef2;height:0.8em'>"
            f"<span style='display:block;height:100%;width:{100 * p:.1f}%;background:{color}'>"
            f"</span></span><span style='width:3.5em;text-align:right'>{p:.2f}</span></div>"
        )
    return "".join(out)


def agreement_svg(points: Sequence[float], width: int = 240, height: int = 60) -> str:
    """The running agreement (0–1) as an inline SVG polyline (one point per judged answer).

    >>> "polyline" in agreement_svg([0.5, 1.0])
    True
    """
    if len(points) < 2:
        return "<div style='color:#555;font-size:0.85em'>agreement: after two answers</div>"
    n = len(points) - 1
    xy = " ".join(
        f"{i * width / n:.1f},{(1 - p) * (height - 4) + 2:.1f}" for i, p in enumerate(points)
    )
    return (
        f"<div style='font-size:0.85em'>agreement of suggestion and answer: "
        f"{points[-1]:.2f}</div><svg class='wb-agreement' width='{width}' height='{height}' "
        f"style='background:#f6f8fa'><polyline fill='none' stroke='#1a7f37' stroke-width='1.5' "
        f"points='{xy}'/></svg>"
    )


def answers_table(answers: Sequence[Answer], texts: dict[str, str]) -> str:
    """The newest answers first: time, text, answer, the model's suggestion."""
    if not answers:
        return "<div style='color:#555;font-size:0.9em'>no answers yet</div>"
    rows = []
    for a in reversed(answers):
        text = texts.get(a.item_id, "")
        short = text if len(text) <= 60 else text[:59] + "…"
        given = a.label if a.label is not None else f"({a.answer})"
        mark = "✓" if a.answer == "accept" and a.label == a.model_label else "✗"
        when = dt.datetime.fromtimestamp(a.time).strftime("%H:%M:%S")
        rows.append(
            f"<tr><td>{a.n}</td><td>{when}</td><td title='{html.escape(text)}'>"
            f"{html.escape(short)}</td><td>{html.escape(given)}</td>"
            f"<td>{html.escape(a.model_label or '')} {mark}</td></tr>"
        )
    return html_table(
        ("#", "time", "text", "answer", "model"),
        rows,
        "class='wb-answers' style='width:100%;font-size:0.85em'",
        th_style="text-align:left",
    )


class LabelingPanel(RuntimeMembers, w.VBox):
    """Label a ``LabelingSession``'s items with the model's suggestions; see the module doc.

    Parameters
    ----------
    session : LabelingSession
    auto_refresh : bool
        Refresh progress and the curve in the background; tests pass False.
    """

    def __init__(
        self, session: LabelingSession, auto_refresh: bool = True, interval: float = 2.0
    ) -> None:
        self.session = session
        self._connect(session.learner, "labeling")
        # Choosing the next item needs no forward pass (cached scores), so it has its own
        # thread: it never queues behind the rescoring and prefetching on the task thread.
        self.picker = TaskRunner(self.runtime, "labeling-next")
        self.current: Suggestion | None = None
        self.loading = False
        self.last_key_ms: float | None = None  # the last key press's handling time
        labels = session.labels
        self.text = w.HTML(layout=w.Layout(max_height="12em", overflow="auto"))
        self.text.add_class("wb-label-item")
        self.bars = w.HTML()
        self.label_buttons = [
            button(f"{i + 1} {lab}", "", "auto", tooltip=f"key {i + 1}")
            for i, lab in enumerate(labels)
        ]
        for i, b in enumerate(self.label_buttons):
            b.on_click(lambda _b, i=i: self.press(str(i + 1)))
        self.accept = w.Button(description="accept (a)", icon="check", button_style="success")
        self.reject = w.Button(description="reject (x)", icon="times", button_style="danger")
        self.skip = w.Button(description="skip (space)", icon="forward")
        self.undo = w.Button(description="undo (⌫)", icon="undo")
        for b, key in (
            (self.accept, "a"),
            (self.reject, "x"),
            (self.skip, "space"),
            (self.undo, "Backspace"),
        ):
            b.on_click(lambda _b, key=key: self.press(key))
        self.progress = w.IntProgress(min=0, max=max(1, len(session.items)), description="done")
        self.progress_text = w.HTML()
        self.curve = w.HTML()
        self.history = w.HTML(layout=w.Layout(max_height="240px", overflow="auto"))
        self.edit_answer = w.Dropdown(
            description="edit #", options=[], layout=w.Layout(width="220px")
        )
        self.edit_label = w.Dropdown(options=list(labels), layout=w.Layout(width="160px"))
        self.edit_button = w.Button(description="change", icon="pencil")
        self.edit_button.on_click(self._on_edit)
        self.key_listener = LabelKeys("wb-labeling", self.press)
        self._lay_out(
            "Labeling",
            [
                row(self.progress, self.progress_text),
                self.text,
                self.bars,
                row(*self.label_buttons),
                row(self.accept, self.reject, self.skip, self.undo),
                self.status,
                self.curve,
                self.history,
                row(self.edit_answer, self.edit_label, self.edit_button),
                self.key_listener,
            ],
        )
        self._load_next()
        self.refresh()
        self.poller = self.runtime.poll(self.refresh, interval, start=auto_refresh)

    # ------------------------------------------------------------------ showing
    def show(self, s: Suggestion | None) -> None:
        """Put ``s`` (or the end of the queue) on screen."""
        with UI_LOCK:
            self.current, self.loading = s, False
            if s is None:
                self.text.value = "<b>every item is answered</b>"
            else:
                self.text.value = f"<div style='white-space:pre-wrap'>{html.escape(s.text)}</div>"
            self.bars.value = score_bars(s, self.session.labels)
            for b, label in zip(self.label_buttons, self.session.labels, strict=True):
                b.button_style = "info" if s is not None and label == s.label else ""
                b.disabled = s is None
            for b in (self.accept, self.reject, self.skip):
                b.disabled = s is None

    def _load_next(self) -> None:
        self.loading = True
        with UI_LOCK:
            self.bars.value = "<div style='color:#555'>scoring the next item…</div>"
        self.picker.submit(lambda: self.session.next(rescore=False), self._shown, "next item")

    def _shown(self, s: Suggestion | None) -> None:
        self.show(s)
        if s is not None:
            self.runtime.submit(lambda: self._freshen(s), None, "current scores")

    def _moved_on(self, s: Suggestion) -> bool:
        """A key asked for another item since ``s`` was shown."""
        return self.loading or self.current is None or self.current.item_id != s.item_id

    def _freshen(self, s: Suggestion) -> None:
        """One more scored candidate (so the next pick needs no pass), the shown item's scores
        on the current weights, then more candidates while the person reads."""

        def stop() -> bool:
            return self._moved_on(s)

        self.session.prefetch(1, stop=stop)
        if stop():
            return
        fresh = self.session.suggest(s.item_id)
        with UI_LOCK:
            if fresh.version != s.version and not self._moved_on(s):
                self.current = fresh
                self.bars.value = score_bars(fresh, self.session.labels)
                for b, label in zip(self.label_buttons, self.session.labels, strict=True):
                    b.button_style = "info" if label == fresh.label else ""
        self.session.prefetch(stop=stop)

    @guarded
    def refresh(self) -> None:
        """Progress, agreement curve and the last 10 answers."""
        st = self.session.stats()
        answers = self.session.answers()
        texts = {i.id: i.text for i in self.session.items}
        rate = f", {st['labels_per_minute']:.1f}/min" if st["labels_per_minute"] else ""
        with UI_LOCK:
            self.progress.value = st["total"] - st["remaining"]
            self.progress_text.value = f"{st['total'] - st['remaining']} / {st['total']}{rate}"
            self.curve.value = agreement_svg(self.session.agreement_curve())
            self.history.value = answers_table(answers[-10:], texts)
            options = [
                (f"#{a.n} {texts.get(a.item_id, '')[:20]}", a.n) for a in reversed(answers[-10:])
            ]
            if [o[1] for o in self.edit_answer.options] != [o[1] for o in options]:
                self.edit_answer.options = options
            self.undo.disabled = not answers

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the next item is shown and its rescoring and prefetching are done."""
        t = self.wait_timeout if timeout is None else timeout
        return self.picker.wait(t) and self.runtime.wait(t) and self.picker.wait(t)

    # ------------------------------------------------------------------ keys and buttons
    @guarded
    def press(self, key: str) -> None:
        """A key (or its button): 1–9 a label, a accept, x reject, space skip, backspace undo."""
        start = time.perf_counter()
        if key == "Backspace":
            self.loading = True
            self.runtime.submit(self._undo, self.show, "undo")
            return
        if self.loading or self.current is None:
            self.status.show("wait for the next item", "info")
            return
        if key.isdigit():
            i = int(key) - 1
            if i >= len(self.session.labels):
                return
            value = self.session.labels[i]
        else:
            value = {"a": "accept", "x": "reject", "space": "skip"}.get(key, "")
            if not value:
                return
        out = self.session.answer(self.current.item_id, value)
        self.last_key_ms = 1000 * (time.perf_counter() - start)
        taught = out["label"] or out["answer"]
        self.status.show(f"#{out['n']} {taught}: {out['message']}", "ok")
        self._load_next()
        self.refresh()

    def _undo(self) -> Suggestion | None:
        out = self.session.undo()
        self.status.show(f"undid #{out['n']}: {out['message']}", "ok")
        self.refresh()
        return self.session.suggest(out["item_id"])

    @guarded
    def _on_edit(self, _button: Any = None) -> None:
        n = self.edit_answer.value
        found = next((a for a in self.session.answers() if a.n == n), None)
        if found is None:
            self.status.error("pick an answer to change")
            return
        out = self.session.answer(found.item_id, str(self.edit_label.value))
        self.status.show(f"#{found.n} is now #{out['n']} {out['label']}", "ok")
        self.refresh()
