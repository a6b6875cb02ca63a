"""Live loss: the series logic, and the panel against a real learner."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pytest
from workbench.widgets import LiveLossPanel, LossSeries

from workbench.learner import OnlineLearner, TrainingExample, UpdateRecord


def records(losses: list[float], start: int = 1) -> list[UpdateRecord]:
    return [UpdateRecord(start + i, x, 1e-3, 0.0, 1.0, 4, None) for i, x in enumerate(losses)]


def test_smoothing_starts_at_the_first_loss_and_follows_the_ema() -> None:
    s = LossSeries(smoothing=0.9)
    s.extend(records([4.0]))
    assert s.smoothed[-1] == 4.0  # bias-corrected: not 0.4
    s.extend(records([2.0], start=2))
    assert math.isclose(s.smoothed[-1], (0.09 * 4 + 0.1 * 2) / 0.19)


def test_decimation_caps_the_points_and_keeps_them_evenly_spaced() -> None:
    s = LossSeries(max_points=4000)
    s.extend(records([float(i % 7) for i in range(100_000)]))
    assert 2000 <= len(s) <= 4000
    assert s.count == 100_000 and s.last_n == 100_000
    steps = np.diff(s.x)
    assert (steps == s.stride).all() and s.stride in (32, 64)
    assert len(s.x) == len(s.loss) == len(s.smoothed)


def test_a_backwards_update_number_starts_a_new_series() -> None:
    s = LossSeries()
    s.extend(records([3.0, 2.0, 1.0]))
    s.extend(records([5.0], start=2))  # e.g. an older checkpoint was loaded
    assert s.x.tolist() == [2] and s.loss.tolist() == [5.0]


def test_non_finite_loss_is_plotted_but_does_not_poison_the_average() -> None:
    s = LossSeries()
    s.extend(records([1.0, math.nan, 1.0]))
    assert math.isnan(s.loss[1]) and s.smoothed[-1] == 1.0


class FakeLearner:
    """Feeds update records in bursts, like a learner that trained between two ticks."""

    offline_job = None  # no offline run (tests/widgets/test_offline.py plots one)

    def __init__(self) -> None:
        self.log: list[UpdateRecord] = []
        self.calls: list[int] = []

    def metrics_since(self, cursor: int) -> tuple[list[UpdateRecord], int]:
        self.calls.append(cursor)
        return self.log[cursor:], len(self.log)

    def get_stats(self) -> dict[str, Any]:
        return {"state": "idle"}


def test_panel_reads_by_cursor_and_redraws_once_per_batch() -> None:
    fake = FakeLearner()
    panel = LiveLossPanel(fake, auto_refresh=False, max_points=100)
    assert panel.refresh() == 0
    fake.log.extend(records([float(i) for i in range(500)]))
    writes = 0

    def count(*_: object) -> None:
        nonlocal writes
        writes += 1

    panel.figure.data[0].on_change(count, "x")
    assert panel.refresh() == 500
    assert fake.calls == [0, 0]
    assert writes == 1  # one assignment per tick, not one per point
    assert len(panel.figure.data[0].x) == len(panel.series) <= 100
    assert panel.refresh() == 0 and fake.calls[-1] == 500
    panel.close()


def test_panel_plots_the_learners_updates_and_exports_a_static_figure(
    learner: OnlineLearner,
) -> None:
    panel = LiveLossPanel(learner, auto_refresh=False)
    for text in ("2 + 2 = 4", "3 + 3 = 6"):
        learner.add_example(TrainingExample(text))
    loss = learner.force_update()
    assert panel.figure.layout.annotations[0].visible  # the empty plot says why it is empty
    assert panel.refresh() == 1
    assert panel.figure.layout.annotations[0].visible is False  # hidden, not deleted
    assert panel.figure.layout.xaxis.dtick == 1 and panel.figure.layout.xaxis.tickformat == "d"
    assert list(panel.figure.data[0].y) == [loss]
    assert list(panel.figure.data[0].x) == [1]
    assert "update 1" in panel.summary.value
    learner.force_update()
    panel.refresh()
    assert list(panel.figure.data[0].x) == [1, 2]

    fig = panel.static_figure()
    assert type(fig) is go.Figure  # not a FigureWidget: it must survive saving the notebook
    assert list(fig.data[0].y) == list(panel.figure.data[0].y)
    assert list(fig.data[1].y) == list(panel.figure.data[1].y)
    assert fig.layout.xaxis.title.text == "update"
    panel.close()


def test_the_figure_follows_the_panel_width_the_browser_reports() -> None:
    panel = LiveLossPanel(FakeLearner(), auto_refresh=False)
    assert panel.figure.layout.width is None  # plotly's autosize until the page reports
    panel.fit.width = 500
    assert panel.figure.layout.width == 492  # less padding and margin, 2 + 2 px each side
    panel.fit.width = 100
    assert panel.figure.layout.width == 240
    panel.close()


def _values(v: Any) -> list[float]:
    """A trace array as plotly sends it: a list, or a typed-array buffer with its dtype."""
    if isinstance(v, dict):
        return np.frombuffer(v["buffer"], dtype=v["dtype"]).tolist()
    return list(v)


def test_a_new_view_gets_the_plot_as_it_is_now_not_as_it_was_built() -> None:
    # A reloaded page asks the kernel for the figure's full state (ipywidgets' request_states);
    # plain FigureWidget answers with its construction-time traces: an empty plot.
    fake = FakeLearner()
    panel = LiveLossPanel(fake, auto_refresh=False)
    fake.log.extend(records([3.0, 2.0, 1.5]))
    panel.refresh()
    panel.fit.width = 500

    state = panel.figure.get_state()
    data, layout = state["_widget_data"], state["_widget_layout"]
    assert [_values(t["x"]) for t in data] == [[1, 2, 3], [1, 2, 3]]
    assert _values(data[0]["y"]) == [3.0, 2.0, 1.5]
    assert _values(data[1]["y"]) == pytest.approx(list(panel.series.smoothed))
    assert layout["annotations"][0]["visible"] is False  # no "no updates yet" over the curve
    assert layout["width"] == 492
    # The partial states of ordinary updates are untouched (no whole figure per message).
    assert set(panel.figure.get_state("_py2js_restyle")) == {"_py2js_restyle"}
    panel.close()
