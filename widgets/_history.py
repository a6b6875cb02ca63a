"""One session-wide history of submissions: Undo takes back the newest, whichever panel added it.

The Workbench owns one ``SubmissionHistory`` and hands it to the Examples and Chat panels; a
panel on its own makes its own. The boundary: plain data, one function over a panel's runtime, and the one view of the list
that both panels show (``HistoryView``, which also enables their Undo buttons). A panel
records what it added (``add``), forgets what it replaced (``discard``), and on Undo ``pop``s
the newest entry, calls the entry's ``on_undo`` (the panel that added it puts its view back)
and asks the learner to remove exactly that example id.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import ipywidgets as w

from ._common import UI_LOCK
from ._runtime import PanelRuntime

__all__ = ["HistoryView", "Submission", "SubmissionHistory", "history_html", "undo_newest"]


@dataclass(frozen=True)
class Submission:
    """One example a panel added: its id and number, which panel, a short label."""

    id: str
    seq: int
    source: str  # "examples" or "chat": the panel that added it
    label: str  # what a person recognises it by (the input, or the taught answer)
    on_undo: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        """How the status line names it.

        >>> Submission("a", 3, "chat", "Paris").describe()
        "#3 (chat feedback 'Paris')"
        >>> Submission("b", 4, "examples", "x" * 50).describe()
        "#4 (example 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…')"
        """
        kind = "chat feedback" if self.source == "chat" else "example"
        text = " ".join(self.label.split())
        short = text if len(text) <= 40 else text[:39] + "…"
        return f"#{self.seq} ({kind} {short!r})"


class SubmissionHistory:
    """Submissions in the order they were added, newest last; thread-safe.

    >>> h = SubmissionHistory()
    >>> h.add(Submission("a", 1, "examples", "one")); h.add(Submission("b", 2, "chat", "two"))
    >>> [s.id for s in h.last()], h.pop().id, len(h)
    (['b', 'a'], 'b', 1)
    """

    def __init__(self) -> None:
        self._entries: list[Submission] = []
        self._lock = threading.Lock()
        self.revision = 0  # bumped on every change: panels re-render when it moves

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def add(self, entry: Submission) -> None:
        with self._lock:
            self._entries.append(entry)
            self.revision += 1

    def discard(self, example_id: str) -> None:
        """Forget ``example_id`` (it was replaced or removed elsewhere); no error if absent."""
        with self._lock:
            self._entries = [e for e in self._entries if e.id != example_id]
            self.revision += 1

    def pop(self) -> Submission | None:
        """The newest entry, taken off the history; None when there is nothing to undo."""
        with self._lock:
            if not self._entries:
                return None
            self.revision += 1
            return self._entries.pop()

    def last(self, n: int = 10) -> list[Submission]:
        """The newest ``n`` entries, newest first."""
        with self._lock:
            return self._entries[::-1][:n]


def history_html(entries: list[Submission]) -> str:
    """The newest submissions as a compact list (what Undo would take back is first).

    >>> history_html([])
    "<div class='wb-history' style='color:#555;font-size:0.85em'>nothing submitted yet</div>"
    >>> "next undo" in history_html([Submission("a", 1, "examples", "one")])
    True
    """
    if not entries:
        return "<div class='wb-history' style='color:#555;font-size:0.85em'>nothing submitted yet</div>"
    items = []
    for i, e in enumerate(entries):
        note = " <span style='color:#888'>← next undo</span>" if i == 0 else ""
        items.append(f"<li>{html.escape(e.describe())}{note}</li>")
    return (
        "<div class='wb-history' style='font-size:0.85em'><span style='color:#555'>"
        f"last {len(entries)} submitted (newest first):</span>"
        f"<ol style='margin:0.2em 0;padding-left:1.6em'>{''.join(items)}</ol></div>"
    )


class HistoryView(w.HTML):
    """A panel's list of the session's newest submissions; its Undo is enabled while there is one.

    ``sync()`` re-renders only when the history changed since the last call (a cheap poll).
    """

    def __init__(self, history: SubmissionHistory, undo: w.Button) -> None:
        super().__init__()
        self.history = history
        self.undo = undo
        self._revision = -1  # the history's revision shown

    def sync(self) -> None:
        with UI_LOCK:
            self.undo.disabled = not len(self.history)
            if self.history.revision != self._revision:
                self._revision = self.history.revision
                self.value = history_html(self.history.last(10))


def undo_newest(
    history: SubmissionHistory, runtime: PanelRuntime, after: Callable[[], None] | None = None
) -> Submission | None:
    """Take back the newest submission, whichever panel added it, and say which in the status.

    The entry's ``on_undo`` runs at once (its panel puts its view back); the learner removes
    exactly that example id on the runtime's task thread; ``after`` runs when it has.
    """
    entry = history.pop()
    if entry is None:
        runtime.status.error("nothing to undo: no example submitted in this session")
        return None
    if entry.on_undo is not None:
        entry.on_undo()
    what = entry.describe()
    runtime.status.show(f"removing {what}…", "busy")

    def done(removed: bool) -> None:
        if removed:
            runtime.status.show(f"undid {what}: it will not be trained on again", "ok")
        else:
            runtime.status.error(f"{what} was already removed")
        if after is not None:
            after()

    runtime.submit(lambda: runtime.learner.remove_example(entry.id), done, "undo")
    return entry
