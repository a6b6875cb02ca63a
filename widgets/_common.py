"""What every panel shares: a status line, the error guard, a serial background runner, a poller.

The boundary: nothing here knows about the learner. Panels wire these pieces to the learner's
public API (through ``_runtime.PanelRuntime``); the pieces only make callbacks safe (errors
shown, never raised into the kernel) and keep slow calls (anything that waits for the learner's
worker) off the kernel's thread.
"""

from __future__ import annotations

import functools
import html
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Literal, Protocol, TypeVar

import ipywidgets as w

__all__ = [
    "SPINNER",
    "UI_LOCK",
    "ErrorSink",
    "Poller",
    "StatusLine",
    "TaskRunner",
    "check_range",
    "format_bytes",
    "format_count",
    "guarded",
    "html_table",
    "number_input",
    "row",
    "short_error",
    "style_widget",
    "title",
    "weight_slider",
]

log = logging.getLogger("workbench.widgets")
# A library must not print on its own: without this, logging's last-resort handler would write
# every traceback to stderr, which the kernel routes into the cell under the panel.
log.addHandler(logging.NullHandler())

# Widgets are updated from background threads (tasks, the poller) and from the kernel's thread
# (callbacks). traitlets is not thread-safe, so every update from either side holds this lock;
# no one holds it while waiting for the learner.
UI_LOCK = threading.RLock()

T = TypeVar("T")
Kind = Literal["info", "ok", "busy", "error"]

_COLORS = {"info": "#555", "ok": "#1a7f37", "busy": "#0969da", "error": "#cf222e"}
# Busy is a CSS spinner (``.wb-spinner`` in _CSS), not an emoji: ⏳ drew an empty box where no
# emoji font is installed. ✓ and ⚠ are in the common text fonts (DejaVu, Liberation).
SPINNER = '<span class="wb-spinner" aria-hidden="true"></span>'
_ICONS = {"info": "", "ok": "✓ ", "busy": SPINNER, "error": "⚠ "}
MAX_MESSAGE = 240


def short_error(error: BaseException) -> str:
    """One line a person can act on: the type for unexpected errors, the message always.

    >>> short_error(ValueError("weight must be in (0, 100], got 0.0"))
    'weight must be in (0, 100], got 0.0'
    >>> short_error(KeyError("x"))
    "KeyError: 'x'"
    >>> short_error(PermissionError(13, "Permission denied", "/models/m.gguf"))
    'Permission denied: /models/m.gguf'
    >>> short_error(IsADirectoryError(21, "/models is a folder: give a file name inside it"))
    '/models is a folder: give a file name inside it'
    """
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, OSError) and error.strerror:
        # "[Errno 21] …" says nothing to a person; the reason and the path do.
        message = error.strerror + (f": {error.filename}" if error.filename else "")
    # Our error types (LearnerError, WeightLoadError) are ValueErrors whose message says what to
    # change, and an OSError's reason is one too; naming the type adds nothing. Anything else is
    # a bug, and the type helps report it.
    expected = isinstance(error, ValueError | OSError)
    text = message if expected and message else f"{type(error).__name__}: {message}".rstrip(": ")
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _scaled(n: float, suffixes: tuple[str, ...]) -> tuple[str, str]:
    """``n`` in the largest unit (steps of 1000) that keeps it under 1000, with two or three
    significant digits: 1.2, 12, 123. Rounding decides the unit: 999.95 K is 1.0 M, not 1000 K."""
    value = float(n)
    for i, suffix in enumerate(suffixes):
        digits = f"{value:.1f}" if abs(value) < 9.95 else f"{value:.0f}"
        if abs(float(digits)) < 1000 or i == len(suffixes) - 1:
            return digits, suffix
        value /= 1000
    raise AssertionError("unreachable: the last suffix always returns")


def format_count(n: float) -> str:
    """A count (parameters, tokens, a vocabulary) as a person reads it: 135M, 1.7B, 49K.

    Parameters
    ----------
    n : float
        The count; below 1000 it is shown as it is.

    Examples
    --------
    >>> format_count(1234), format_count(1_500_000), format_count(135e6), format_count(12)
    ('1.2K', '1.5M', '135M', '12')
    >>> format_count(1.7e9), format_count(999_950), format_count(9_960_000), format_count(0)
    ('1.7B', '1.0M', '10M', '0')
    """
    if not math.isfinite(n) or abs(n) < 1000:
        return f"{n:g}"
    digits, suffix = _scaled(n / 1000, ("K", "M", "B", "T"))
    return digits + suffix


def format_bytes(n: float) -> str:
    """A size in bytes, decimal units (1 GB = 10⁹ bytes, as file managers and the Hub show).

    Examples
    --------
    >>> format_bytes(1_610_612_736), format_bytes(270e6), format_bytes(4096), format_bytes(512)
    ('1.6 GB', '270 MB', '4.1 kB', '512 B')
    >>> format_bytes(999_999), format_bytes(0), format_bytes(2.5e12)
    ('1.0 MB', '0 B', '2.5 TB')
    """
    if not math.isfinite(n) or abs(n) < 1000:
        return f"{n:g} B"
    digits, suffix = _scaled(n / 1000, ("kB", "MB", "GB", "TB", "PB"))
    return f"{digits} {suffix}"


# Layout that ipywidgets' Layout cannot express (it has no ``gap``), shared by every panel. A
# <style> in a hidden widget still applies; a repeat per panel is harmless.
_CSS = """<style>
.wb-row { gap: 0.3em 0.6em; }
.wb-spinner {
  display: inline-block; box-sizing: border-box; width: 0.9em; height: 0.9em;
  margin-right: 0.4em; vertical-align: -0.12em; border-radius: 50%;
  border: 2px solid currentColor; border-right-color: transparent;
  animation: wb-spin 0.8s linear infinite;
}
@keyframes wb-spin { to { transform: rotate(360deg); } }
/* A bar whose amount is unknown (a save, the start of a load): full, stripes moving. */
.wb-indeterminate .progress-bar {
  background-image: linear-gradient(45deg, rgba(255, 255, 255, 0.4) 25%, transparent 25%,
    transparent 50%, rgba(255, 255, 255, 0.4) 50%, rgba(255, 255, 255, 0.4) 75%,
    transparent 75%, transparent);
  background-size: 16px 16px;
  animation: wb-stripes 0.8s linear infinite;
}
@keyframes wb-stripes { from { background-position: 16px 0; } to { background-position: 0 0; } }
@media (prefers-reduced-motion: reduce) {
  .wb-spinner { animation-duration: 2.4s; }
  .wb-indeterminate .progress-bar { animation-duration: 2.4s; }
}
.wb-panel { padding: 2px; }
.wb-right { border-left: 1px solid var(--jp-border-color2, #e0e0e0); padding-left: 12px; }
.wb-examples-table td { padding: 1px 0.8em 1px 0; vertical-align: top; }
/* A long value (a path, "llama (layer 4 · head 6 · …)") wraps inside a narrow panel. */
.wb-panel td { overflow-wrap: anywhere; }
.wb-examples-table tr:nth-child(even) { background: rgba(127, 127, 127, 0.06); }
.wb-panel .widget-label, .wb-panel .widget-label-basic { white-space: nowrap; }
.wb-compact .widget-html-content { line-height: 1.45; }
/* A flex item is at least as wide as its content: without these, a plot that first rendered
   700 px wide keeps its column 700 px wide and plotly's autosize never sees a narrower box. */
.wb-right, .wb-live-loss, .wb-live-loss > *, .wb-live-loss .js-plotly-plot { min-width: 0; max-width: 100%; }
.wb-tabs .wb-title { display: none; }
/* A tab is as wide as its title (ipywidgets' fixed 144 px clips "Watch (2 changed)", and in a
   narrow column its equal shares clipped "Examples"). As specific as ipywidgets' own rule. */
.jupyter-widgets.jupyter-widget-tab.wb-tabs > .lm-TabBar .lm-TabBar-tab {
  flex: 0 1 auto; max-width: none; min-width: 0;
}
.wb-tabs .widget-tab-contents, .wb-tabs .lm-TabPanel-stackedPanel { padding: 8px; }
</style>"""


def check_range(name: str, value: float, low: float, high: float) -> str | None:
    """Why ``value`` is refused (outside ``[low, high]`` or not a number); None if it is fine.

    Out-of-range input is refused with this message and the control put back, never clamped
    silently (a weight typed as 0 must not quietly become 0.1).

    >>> check_range("weight", 0, 0.1, 10)
    'weight must be between 0.1 and 10, got 0'
    >>> check_range("learning rate", 1e-3, 1e-6, 0.1) is None
    True
    """
    if not math.isfinite(value) or not low <= value <= high:
        return f"{name} must be between {low:g} and {high:g}, got {value:g}"
    return None


def number_input(
    slider: w.FloatLogSlider, name: str, refuse: Callable[[str], None], width: str = "80px"
) -> w.FloatText:
    """A typed readout for a log slider that refuses out-of-range values instead of clamping.

    The slider's own readout clamps what is typed without a word; this box shows the slider's
    value, moves the slider to a value typed in range, and for one out of range calls
    ``refuse(message)`` and shows the slider's value again.

    >>> s = weight_slider(); box = number_input(s, "weight", print)
    >>> box.value = 4.0; s.value
    4.0
    >>> box.value = 0.0
    weight must be between 0.1 and 10, got 0; kept 4
    >>> (s.value, box.value)
    (4.0, 4.0)
    """
    slider.readout = False
    low, high = slider.base**slider.min, slider.base**slider.max
    box = w.FloatText(
        value=float(f"{slider.value:.3g}"),
        continuous_update=False,
        layout=w.Layout(width=width, min_width=width),
    )
    box.add_class("wb-number")
    syncing = [False]

    def show(value: float) -> None:
        syncing[0] = True
        try:
            box.value = float(f"{value:.3g}")
        finally:
            syncing[0] = False

    def from_slider(change: dict[str, Any]) -> None:
        show(change["new"])

    def from_box(change: dict[str, Any]) -> None:
        if syncing[0]:
            return
        value = float(change["new"])
        problem = check_range(name, value, low, high)
        if problem is None:
            slider.value = value
            return
        refuse(f"{problem}; kept {slider.value:.3g}")
        show(slider.value)

    slider.observe(from_slider, "value")
    box.observe(from_box, "value")
    return box


def style_widget() -> w.HTML:
    """The panels' CSS; put it in a panel's children once."""
    return w.HTML(_CSS, layout=w.Layout(display="none"))


def row(*children: w.Widget, wrap: bool = True, **layout: Any) -> w.HBox:
    """A horizontal row with gaps between its children, wrapping when the panel is narrow."""
    box = w.HBox(
        list(children),
        layout=w.Layout(align_items="center", flex_flow="row wrap" if wrap else "row", **layout),
    )
    box.add_class("wb-row")
    return box


def html_table(
    columns: Sequence[str],
    rows: Sequence[str],
    attrs: str,
    *,
    th_style: str = "text-align:left;padding-right:0.8em",
    colgroup: str = "",
) -> str:
    """A table with ``attrs`` on its tag: a head of ``columns``, then ``rows`` (``<tr>``s).

    >>> html_table(("a",), ["<tr><td>1</td></tr>"], "class='t'", th_style="x")
    "<table class='t'><thead><tr><th style='x'>a</th></tr></thead><tbody><tr><td>1</td></tr></tbody></table>"
    """
    head = "".join(f"<th style='{th_style}'>{h}</th>" for h in columns)
    return (
        f"<table {attrs}>{colgroup}<thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def title(text: str) -> w.HTML:
    """A panel's heading; hidden when the panel sits in a Workbench tab named the same."""
    heading = w.HTML(f"<b>{html.escape(text)}</b>")
    heading.add_class("wb-title")
    return heading


def weight_slider(**layout: Any) -> w.FloatLogSlider:
    """An example's weight on a log scale from 0.1 to 10, starting at 1; ``layout`` sizes it.

    >>> s = weight_slider(width="260px")
    >>> (s.value, s.base**s.min, s.base**s.max, s.layout.width)
    (1.0, 0.1, 10.0, '260px')
    """
    return w.FloatLogSlider(
        value=1.0,
        base=10,
        min=-1,
        max=1,
        step=0.05,
        description="weight",
        readout_format=".2g",
        style={"description_width": "50px"},
        layout=w.Layout(**layout),
    )


class StatusLine(w.HTML):
    """A one-line status area: what happened last, in colour; the full text in the tooltip."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layout.min_height = "1.6em"
        self.kind: Kind = "info"
        self.text = ""

    def show(self, text: str, kind: Kind = "info") -> None:
        self.kind, self.text = kind, text
        safe = html.escape(text)
        color = _COLORS[kind]
        value = (
            f'<span class="wb-status wb-status-{kind}" title="{safe}" '
            f'style="color:{color};font-size:0.9em">{_ICONS[kind]}{safe}</span>'
        )
        with UI_LOCK:
            self.value = value

    def error(self, error: BaseException | str) -> None:
        self.show(error if isinstance(error, str) else short_error(error), "error")


class ErrorSink(Protocol):
    """Where a failed callback, task or refresh is reported: a status line, a traceback slot."""

    status: StatusLine
    last_traceback: str | None


def guarded(method: Callable[..., T]) -> Callable[..., T | None]:
    """Wrap a panel callback: any error is shown in ``self.status`` and logged, never raised.

    ipywidgets would print an escaping traceback into the notebook (or drop it silently in a
    background thread); either way the person would not see what went wrong where they clicked.
    The traceback is logged once (``logging.getLogger("workbench.widgets")``) and kept in
    ``self.last_traceback`` for a bug report. A panel with a ``runtime`` (``PanelRuntime``)
    reports to it: the runtime owns the panel's status line and traceback slot.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T | None:
        try:
            with UI_LOCK:
                return method(self, *args, **kwargs)
        except Exception as e:
            report_error(getattr(self, "runtime", self), e, method.__qualname__)
            return None

    return wrapper


def report_error(panel: ErrorSink, error: BaseException, where: str) -> None:
    import traceback

    panel.last_traceback = "".join(traceback.format_exception(error))
    log.warning("%s failed: %s", where, short_error(error), exc_info=error)
    status = getattr(panel, "status", None)
    if isinstance(status, StatusLine):
        status.error(error)


class TaskRunner:
    """Runs a panel's slow calls one at a time on a daemon thread, in submission order.

    Serial on purpose: a learning-rate change followed by a forced update must reach the learner
    in that order. Daemon, so a learner that never answers cannot keep the kernel from exiting.
    ``wait()`` lets tests (and notebooks) block until everything submitted has finished.
    """

    def __init__(self, panel: ErrorSink, name: str) -> None:
        self._panel = panel
        self._name = name
        self._queue: queue.Queue[
            tuple[Callable[[], Any], Callable[[Any], None] | None, str, Future[Any]]
        ] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Condition(self._lock)

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._pending > 0

    def submit(
        self, fn: Callable[[], T], on_done: Callable[[T], None] | None = None, what: str = "task"
    ) -> Future[T]:
        """Queue ``fn``; then call ``on_done(result)`` on the same thread. Errors go to the panel."""
        fut: Future[T] = Future()
        with self._lock:
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name=f"workbench-{self._name}", daemon=True
                )
                self._thread.start()
        self._queue.put((fn, on_done, what, fut))
        return fut

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until every submitted task has finished; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _run(self) -> None:
        while True:
            fn, on_done, what, fut = self._queue.get()
            try:
                result = fn()
                fut.set_result(result)
                if on_done is not None:
                    with UI_LOCK:
                        on_done(result)
            except Exception as e:
                if not fut.done():
                    fut.set_exception(e)
                report_error(self._panel, e, f"{self._name}: {what}")
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()


class Poller:
    """Calls ``tick()`` every ``interval`` seconds (at most 5 Hz) on a daemon thread.

    A thread rather than the kernel's event loop: it keeps refreshing while a cell runs, and
    ipywidgets 8 sends updates from any thread. ``tick`` runs under ``UI_LOCK``; an error stops
    nothing, it is shown once (repeats of the same message are not re-logged), and the poller
    stops for good when ``tick`` returns False (e.g. the learner was closed).
    """

    MIN_INTERVAL = 0.2  # 5 Hz: faster repaints cost the kernel more than the eye gains

    def __init__(
        self, panel: ErrorSink, tick: Callable[[], bool | None], interval: float = 0.5
    ) -> None:
        self._panel = panel
        self._tick = tick
        self.interval = max(float(interval), self.MIN_INTERVAL)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="workbench-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with UI_LOCK:
                    keep = self._tick()
                self._last_error = None
                if keep is False:
                    return
            except Exception as e:
                message = short_error(e)
                if message != self._last_error:  # a persistent failure is reported once
                    self._last_error = message
                    report_error(self._panel, e, "refresh")
