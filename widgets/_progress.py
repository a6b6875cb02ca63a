"""A progress bar in the panel for a slow learner call (load, save, checkpoint).

``ProgressRow`` is a widget bar plus a label. While a call runs the bar is *indeterminate*
(full, striped, moving: alive, amount unknown) and the label counts seconds; when the call's
byte count becomes known the bar turns *determinate* ("120 MB of 270 MB"); after it, the bar
hides and the label says how long it took.

Where the count comes from: the formats layer shows tqdm bars during a big load, on the
learner's worker thread: ``"loading <file>"`` in bytes (SafeTensors, raw binary, checkpoints)
and ``"GGUF"`` in tensors decoded. Left alone, such a bar prints into the notebook cell that
created the learner (GGUF's console bar: a pink stderr box that looks like an error).
``follow_tqdm`` finds those bars while the panel waits for the load, silences them and mirrors
their count into the panel's bar. This is a bridge: the learner's ``load_weights`` takes no
progress callback yet; with one, the panel would pass ``ProgressRow.show_count`` and this module
would not need to know about tqdm or the formats layer's bar descriptions.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ipywidgets as w

from ._common import UI_LOCK, format_bytes

__all__ = ["ProgressRow", "follow_tqdm", "is_load_bar"]

STEPS = 1000  # the bar's resolution when determinate
# A bar's description (tqdm's ``desc``) -> whether to mirror it.
BarFilter = Callable[[str], bool]


def is_load_bar(desc: str) -> bool:
    """Whether ``desc`` describes one of the formats layer's load bars.

    >>> is_load_bar("loading model.safetensors"), is_load_bar("GGUF"), is_load_bar("epoch 3")
    (True, True, False)
    """
    return desc.startswith("loading ") or desc == "GGUF"


TICK = 0.2  # s: the label's clock; also how soon a tqdm bar is found (tqdm waits 1 s to draw)


class ProgressRow:
    """A widget progress bar and a label for one slow call at a time.

    Parameters
    ----------
    width : str
        The bar's CSS width.

    Examples
    --------
    >>> row = ProgressRow()
    >>> with row.running("saving"):
    ...     row.show_count(50_000_000, 200_000_000)
    ...     (row.bar.value, row.label.value, "wb-indeterminate" in row.bar._dom_classes)
    (250, '50 MB of 200 MB', False)
    >>> row.bar.layout.visibility, row.label.value.startswith("saving took ")
    ('hidden', True)
    """

    def __init__(self, width: str = "160px") -> None:
        self.bar = w.IntProgress(
            value=0,
            min=0,
            max=STEPS,
            bar_style="info",
            layout=w.Layout(width=width, visibility="hidden"),
        )
        self.bar.add_class("wb-progress")
        self.label = w.Label()
        self._what = ""
        self._start = 0.0
        self._counted = False

    @contextmanager
    def running(self, what: str, follow: BarFilter | None = None) -> Iterator[None]:
        """Show the bar while the block runs; ``follow``: which new tqdm bars to mirror."""
        stop = threading.Event()
        self._what, self._start, self._counted = what, time.monotonic(), False
        with UI_LOCK:
            self.bar.value = STEPS
            self.bar.add_class("wb-indeterminate")
            self.bar.layout.visibility = "visible"
            self.label.value = f"{what}…"

        def tick() -> None:
            found: Any = None
            while not stop.wait(TICK):
                if follow is not None:
                    if found is None:
                        found = follow_tqdm(follow, since=self._start)
                    if found is not None:
                        if found.total:
                            self.show_count(found.n, found.total, found.unit)
                        if found.disable:  # closed: a load may draw another bar after it
                            found = None
                        continue
                if not self._counted:
                    with UI_LOCK:
                        self.label.value = f"{what}… {time.monotonic() - self._start:.0f} s"

        t = threading.Thread(target=tick, name="workbench-progress", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join(1)
            with UI_LOCK:
                self.bar.layout.visibility = "hidden"
                self.bar.remove_class("wb-indeterminate")
                self.label.value = f"{what} took {time.monotonic() - self._start:.1f} s"

    def show_count(self, done: float, total: float, unit: str = "B") -> None:
        """Switch to (or update) the determinate bar: ``done`` of ``total`` bytes (``unit``
        "B") or things ("120 of 272 tensors")."""
        if total <= 0:
            return
        with UI_LOCK:
            if not self._counted:
                self._counted = True
                self.bar.remove_class("wb-indeterminate")
            self.bar.value = int(STEPS * min(max(done / total, 0.0), 1.0))
            if unit == "B":
                self.label.value = f"{format_bytes(done)} of {format_bytes(total)}"
            else:
                self.label.value = f"{done:g} of {total:g} {unit}s"


class _Discard(io.TextIOBase):
    def write(self, s: str) -> int:
        return len(s)


def _noop(*_args: Any, **_kwargs: Any) -> None:
    return None


def follow_tqdm(wanted: BarFilter, since: float = 0.0) -> Any:
    """The newest open tqdm bar whose description is ``wanted`` and that started after
    ``since`` (time.monotonic() seconds), silenced so it draws nothing itself; None if none.

    Silenced, not disabled: a disabled tqdm stops counting. Its own drawing goes nowhere (the
    console bar's writes, the notebook bar's ``display``), and its count keeps going up.
    """
    try:
        from tqdm.std import tqdm
    except ImportError:
        return None
    # tqdm's start_t is time.time(); convert ``since`` from the monotonic clock.
    since_wall = time.time() - (time.monotonic() - since) - 0.5
    with tqdm.get_lock():
        bars = list(getattr(tqdm, "_instances", ()))  # every open bar, console or notebook
    bars.sort(key=lambda bar: getattr(bar, "start_t", 0.0), reverse=True)
    for bar in bars:
        if getattr(bar, "disable", True) or not wanted(str(getattr(bar, "desc", ""))):
            continue
        if getattr(bar, "start_t", 0.0) < since_wall:
            continue
        if not getattr(bar, "_wb_silenced", False):
            bar.fp = _Discard()
            bar.display = _noop
            if hasattr(bar, "disp"):  # the notebook bar draws through ``disp``
                bar.disp = _noop
            if hasattr(bar, "container"):
                bar.displayed = True  # the notebook bar's delayed display: never
                bar.container.layout.display = "none"
            bar._wb_silenced = True
        return bar
    return None
