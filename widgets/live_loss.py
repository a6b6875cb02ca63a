"""Live loss: per-update loss and a smoothed line, fed from the learner's metrics by cursor.

``LossSeries`` is the logic (no widgets): it ingests ``UpdateRecord``s, keeps a bias-corrected
exponential moving average over every update, and decimates what it stores so a long session
never holds more than ``max_points`` points. ``LiveLossPanel`` reads new records with
``learner.metrics_since(cursor)`` at most 5 times a second and replaces the trace arrays once
per tick inside ``batch_update`` (appending point by point re-sends the whole array each time,
which is quadratic). ``static_figure()`` returns a plain plotly ``Figure`` for saved notebooks,
where a ``FigureWidget`` reopens as an empty plot.

A reloaded page rebuilds every widget from the state the kernel sends it. plotly's
``FigureWidget`` keeps that state (``_widget_data``, ``_widget_layout``) as it was built and
sends later changes to the open views only, so a reload used to show an empty plot under a
caption saying "update 8"; ``LiveFigure`` answers a state request with the current figure.

An offline fine-tune (``learner.offline_job``) is a second series: its loss per step, read by
cursor from the job's streamed metrics on the same tick, on an axis of its own at the top
(offline steps are not live updates); a dashed line marks the update its weights came back at.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import ipywidgets as w
import numpy as np
import plotly.graph_objects as go

from workbench.learner import Learner, OfflineJob

from ._common import UI_LOCK, guarded, row
from ._resize import FitWidth
from ._runtime import RuntimeMembers

__all__ = ["LiveFigure", "LiveLossPanel", "LossSeries"]

MIN_WIDTH = 240  # px; a narrower plot is unreadable, so the panel scrolls instead
PADDING = 2  # px: .wb-panel's padding (_common._CSS)
WIDGET_MARGIN = 2  # px: ipywidgets' --jp-widgets-margin around every widget in a box
MARKERS_UP_TO = 300  # points; beyond this the per-update trace is drawn as a plain line
OFFLINE_COLOR = "#2ca02c"


class _Step(NamedTuple):
    """An offline step as ``LossSeries`` reads it."""

    n: int
    loss: float


class LossSeries:
    """Loss per update plus its smoothed line, decimated to at most ``max_points`` points.

    The moving average sees every update; only what is stored for plotting is thinned, by
    doubling a stride (keep every 2nd, 4th, … update) so old and new points stay evenly spaced.

    Parameters
    ----------
    smoothing : float
        EMA weight of the past, in [0, 1); 0 is no smoothing. Bias-corrected, so the line starts
        at the first loss instead of rising from zero.
    max_points : int
        Most points kept; when exceeded the stride doubles and every other point is dropped.

    Examples
    --------
    >>> from workbench.learner import UpdateRecord
    >>> s = LossSeries(smoothing=0.5, max_points=4)
    >>> s.extend(UpdateRecord(n, float(n), 1e-3, 0.0, 1.0, 2, None) for n in range(1, 7))
    6
    >>> s.x.tolist(), s.stride
    ([2, 4, 6], 2)
    >>> [round(float(v), 3) for v in s.smoothed]
    [1.667, 3.267, 5.095]
    """

    def __init__(self, smoothing: float = 0.9, max_points: int = 4000) -> None:
        if not 0 <= smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if max_points < 2:
            raise ValueError(f"max_points must be at least 2, got {max_points}")
        self.smoothing = smoothing
        self.max_points = max_points
        self.clear()

    def clear(self) -> None:
        self.stride = 1
        self.count = 0  # updates seen (not stored)
        self.last_n: int | None = None
        self.last_loss: float | None = None
        self._ema = 0.0
        self._ema_weight = 0.0  # 1 - smoothing**k: the bias correction
        self._x: list[int] = []
        self._loss: list[float] = []
        self._smooth: list[float] = []

    def extend(self, records: Iterable[Any]) -> int:
        """Ingest update records (anything with ``n`` and ``loss``); returns how many were new.

        An update number that goes backwards (weights reloaded from an older checkpoint) starts
        the series afresh rather than drawing a line back across the plot.
        """
        added = 0
        for r in records:
            n, loss = int(r.n), float(r.loss)
            if self.last_n is not None and n <= self.last_n:
                self.clear()
            self.last_n, self.last_loss = n, loss
            self.count += 1
            added += 1
            if math.isfinite(loss):
                self._ema = self.smoothing * self._ema + (1 - self.smoothing) * loss
                self._ema_weight = self.smoothing * self._ema_weight + (1 - self.smoothing)
            smooth = self._ema / self._ema_weight if self._ema_weight else math.nan
            if self.count % self.stride == 0 or self.stride == 1:
                self._x.append(n)
                self._loss.append(loss)
                self._smooth.append(smooth)
                if len(self._x) > self.max_points:
                    self._decimate()
        return added

    def _decimate(self) -> None:
        self.stride *= 2
        # Keep the points whose running count is a multiple of the new stride; with count
        # i+1 for the i-th stored point at the old stride, those are the odd indices.
        self._x = self._x[1::2]
        self._loss = self._loss[1::2]
        self._smooth = self._smooth[1::2]

    @property
    def x(self) -> np.ndarray:
        return np.asarray(self._x, dtype=np.int64)

    @property
    def loss(self) -> np.ndarray:
        return np.asarray(self._loss, dtype=np.float64)

    @property
    def smoothed(self) -> np.ndarray:
        return np.asarray(self._smooth, dtype=np.float64)

    def __len__(self) -> int:
        return len(self._x)


class LiveFigure(go.FigureWidget):
    """A ``FigureWidget`` whose state, when a page asks for it, is its current data and layout.

    A new view (a reloaded page, a notebook reopened while the kernel runs) asks the kernel for
    each widget's full state. plotly answers with the traces and layout as they were at
    construction (or at the last ``display`` of the figure itself, not of a box holding it):
    every later ``restyle``/``relayout`` went to the views open then. Here the full state is
    always the figure now, serialized the way plotly serializes it; nothing extra is sent to
    views that are already open.
    """

    _LIVE = ("_widget_data", "_widget_layout")

    def get_state(self, key: Any = None, drop_defaults: bool = False) -> dict[str, Any]:
        with UI_LOCK:  # the poller may be replacing the traces' arrays on its thread
            state: dict[str, Any] = super().get_state(key, drop_defaults)
            built = "_data" in self.__dict__  # plotly sets it after the widget's own __init__
            for name in self._LIVE:
                if name in state and built:
                    value = self._data if name == "_widget_data" else self._layout_obj._props
                    to_json = self.trait_metadata(name, "to_json", self._trait_to_json)
                    state[name] = to_json(value, self)
            return state


class LiveLossPanel(RuntimeMembers, w.VBox):
    """The loss of every update and its moving average, refreshed from the learner's metrics.

    Parameters
    ----------
    learner : Learner
        Read through ``metrics_since`` (and ``get_stats``, to stop polling once it is closed).
    auto_refresh : bool
        Poll in the background (≤ 5 Hz). Tests pass False and call ``refresh()``.
    interval : float
        Seconds between polls; at least 0.2.
    smoothing, max_points
        See ``LossSeries``.
    """

    def __init__(
        self,
        learner: Learner,
        auto_refresh: bool = True,
        interval: float = 0.25,
        smoothing: float = 0.9,
        max_points: int = 4000,
        height: int = 300,
    ) -> None:
        self._connect(learner, "live-loss")
        self.series = LossSeries(smoothing, max_points)
        self.cursor = 0
        # the offline run plotted (the learner's newest), its loss per step, and its cursor
        self.offline_job: OfflineJob | None = None
        self.offline = LossSeries(0.0, max_points)
        self.offline_cursor = 0
        self._marked: OfflineJob | None = None  # the run whose adoption line is drawn
        self.figure = LiveFigure(
            data=[
                go.Scatter(
                    x=[],
                    y=[],
                    name="loss per update",
                    mode="lines+markers",
                    line={"width": 1, "color": "rgba(31,119,180,0.45)"},
                    marker={"size": 5, "color": "rgba(31,119,180,0.7)"},
                ),
                go.Scatter(
                    x=[],
                    y=[],
                    name=f"smoothed (EMA {smoothing:g})",
                    mode="lines",
                    line={"width": 2.5, "color": "#d62728"},
                ),
            ],
            layout=_layout(height),
        )
        self.summary = w.HTML()
        self.fit = FitWidth("wb-live-loss")
        self.fit.observe(self._on_width, "width")
        self._lay_out(
            "Live loss",
            [
                self.figure,
                row(self.summary, self.status),
                self.fit,
            ],
        )
        self._show_summary()
        self.poller = self.runtime.poll(self.refresh, interval, start=auto_refresh)

    @guarded
    def refresh(self) -> int:
        """Pull new update records and offline steps, redraw once; returns how many arrived."""
        records, self.cursor = self.learner.metrics_since(self.cursor)
        steps, adopted = self._pull_offline()
        if not records and not steps and not adopted:
            return 0
        added = self.series.extend(records) + self.offline.extend(steps)
        self._redraw()
        return added

    def _pull_offline(self) -> tuple[list[_Step], bool]:
        """New step losses of the learner's newest offline run, and whether its adoption
        line is still to be drawn."""
        job = self.learner.offline_job
        if job is None:
            return [], False
        if job is not self.offline_job:  # a new run: a new series
            self.offline_job, self.offline_cursor = job, 0
            self.offline.clear()
        events, self.offline_cursor = job.metrics_since(self.offline_cursor)
        steps = [
            _Step(int(e["step"]), float(e["loss"]))
            for e in events
            if e.get("event") == "step" and e.get("loss") is not None
        ]
        return steps, job.adoption is not None and self._marked is not job

    @guarded
    def _on_width(self, change: dict[str, Any]) -> None:
        width = int(change["new"])
        if width > 0:
            # The panel's padding and the figure's margin (ipywidgets' 2 px), both sides: with
            # only the padding taken off, the plot stuck out 4 px and the panel scrolled sideways.
            self.figure.layout.width = max(MIN_WIDTH, width - 2 * (PADDING + WIDGET_MARGIN))

    def _redraw(self) -> None:
        x, loss, smooth = self.series.x, self.series.loss, self.series.smoothed
        # Markers help while there are few points and turn into a smear beyond a few hundred.
        mode = "lines+markers" if len(x) <= MARKERS_UP_TO else "lines"
        with self.figure.batch_update():
            hint = self.figure.layout.annotations[0]
            if hint.visible is not False:  # the "no updates yet" hint goes with the first point
                # Hidden, not deleted: the layout keeps saying so (an emptied list did not).
                hint.visible = False
                self.figure.layout.xaxis.autorange = True
                self.figure.layout.yaxis.autorange = True
            # Whole updates: below 10 plotly would tick 0.5, 1, 1.5 …
            dtick = 1 if len(x) and x[-1] <= 10 else None
            if self.figure.layout.xaxis.dtick != dtick:
                self.figure.layout.xaxis.dtick = dtick
            if self.figure.data[0].mode != mode:
                self.figure.data[0].mode = mode
            self.figure.data[0].x, self.figure.data[0].y = x, loss
            self.figure.data[1].x, self.figure.data[1].y = x, smooth
            if self.offline_job is not None:
                self._draw_offline(self.offline_job)
        self._show_summary()

    def _draw_offline(self, job: OfflineJob) -> None:
        """The run's loss per step on the top axis (the trace is added with the first run), and
        a dashed line at the update its weights were adopted at."""
        if len(self.figure.data) < 3:
            self.figure.add_trace(
                go.Scatter(
                    x=[],
                    y=[],
                    name="offline run (per step, top axis)",
                    mode="lines+markers",
                    xaxis="x2",
                    line={"width": 1.5, "color": OFFLINE_COLOR},
                    marker={"size": 4, "color": OFFLINE_COLOR},
                )
            )
            self.figure.layout.xaxis2 = {
                "title": {"text": "offline step"},
                "overlaying": "x",
                "side": "top",
                "rangemode": "tozero",
                "tickformat": "d",
                "showgrid": False,
            }
            self.figure.layout.margin.t = 70  # room for the top axis above the legend
        trace = self.figure.data[2]
        trace.x, trace.y = self.offline.x, self.offline.loss
        adoption = job.adoption
        if adoption is not None and self._marked is not job:
            self._marked = job
            at = adoption.get("at_update", 0)
            # A shape and a note of their own: add_vline fails on a figure with two x axes.
            self.figure.add_shape(
                type="line",
                x0=at,
                x1=at,
                xref="x",
                y0=0,
                y1=1,
                yref="paper",
                line={"dash": "dash", "color": OFFLINE_COLOR, "width": 1.5},
            )
            self.figure.add_annotation(
                x=at,
                xref="x",
                y=1,
                yref="paper",
                yanchor="top",
                xanchor="right",
                text="offline weights",
                showarrow=False,
                font={"color": OFFLINE_COLOR, "size": 11},
            )

    def _show_summary(self) -> None:
        s, offline = self.series, self.offline
        parts = []
        if s.last_n is not None:
            smooth = s.smoothed[-1] if len(s) else math.nan
            thinned = f" · every {s.stride}th point shown" if s.stride > 1 else ""
            parts.append(
                f"update {s.last_n} · loss {s.last_loss:.4g} · smoothed {smooth:.4g}{thinned}"
            )
        if offline.last_n is not None:
            parts.append(f"offline step {offline.last_n} · loss {offline.last_loss:.4g}")
        text = " · ".join(parts) if parts else "no updates yet"
        self.summary.value = f'<span style="color:#555">{text}</span>'

    def static_figure(self) -> go.Figure:
        """A plain plotly ``Figure`` with the current data: survives saving the notebook."""
        fig = go.Figure(layout=self.figure.layout)
        for trace in self.figure.data:
            fig.add_trace(go.Scatter(trace))
        return fig


def _layout(height: int) -> go.Layout:
    return go.Layout(
        height=height,
        autosize=True,
        margin={"l": 50, "r": 10, "t": 36, "b": 40},
        # Until the first update: fixed axes and a hint instead of plotly's arbitrary -1..4.
        xaxis={
            "title": {"text": "update"},
            "rangemode": "tozero",
            "range": [0, 10],
            "tickformat": "d",  # updates are counted, never fractional
        },
        yaxis={"title": {"text": "loss"}, "range": [0, 10]},
        annotations=[
            {
                # Two lines: one was cut off at both ends in a 250 px plot.
                "text": "no updates yet:<br>add examples, then Force update",
                "showarrow": False,
                "xref": "paper",
                "yref": "paper",
                "x": 0.5,
                "y": 0.5,
                "font": {"color": "#888"},
                "visible": True,
            }
        ],
        # Top left, above the plot: plotly's toolbar sits top right and would cover it.
        legend={"orientation": "h", "x": 0, "xanchor": "left", "y": 1.02, "yanchor": "bottom"},
        template="plotly_white",
        uirevision="keep",  # keep the person's zoom across refreshes
    )
