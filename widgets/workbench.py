"""``Workbench(learner)``: every panel on one screen, refreshed by one poller.

Left, a tab per activity (Examples, Chat, Weights, Watch, and Labeling when a
``LabelingSession`` is attached); right, always visible, the live loss above the Learning
controls and the offline fine-tune's, so a person sees the effect of what they teach (or label) as they do it. The
Workbench owns layout and the refresh clock only; panels own their logic and work alone.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w
import plotly.graph_objects as go

from workbench.labeling import LabelingSession
from workbench.learner import Learner

from ._common import format_count, guarded, row, style_widget
from ._history import SubmissionHistory
from ._runtime import PanelRuntime
from .chat import ChatPanel
from .examples import ExamplesPanel
from .labeling import LabelingPanel
from .learning import LearningPanel
from .live_loss import LiveLossPanel
from .offline import OfflinePanel
from .watch import WatchPanel
from .weights import WeightsPanel

__all__ = ["Workbench"]


class Workbench(w.VBox):
    """All panels for one learner: teach, chat, load/save on the left; loss and learning right.

    Parameters
    ----------
    learner : Learner
    labeling : LabelingSession, optional
        A labeling session on the same learner: adds a Labeling tab (``LabelingPanel``).
    auto_refresh : bool
        Poll the learner (≤ 5 Hz) in the background; tests pass False and call ``refresh()``.
    interval : float
        Seconds between polls; at least 0.2.

    Attributes
    ----------
    examples, chat, weights, watch, learning, live_loss, offline, labeling
        The panels, each usable on its own (``labeling`` is None without a session).
    """

    def __init__(
        self,
        learner: Learner,
        auto_refresh: bool = True,
        interval: float = 0.25,
        *,
        labeling: LabelingSession | None = None,
    ) -> None:
        if labeling is not None and labeling.learner is not learner:
            raise ValueError(
                "the labeling session belongs to another learner: pass the session made with "
                "LabelingSession(learner, ...) for this Workbench's learner"
            )
        self.learner = learner
        self.runtime = PanelRuntime(learner, "workbench")
        self.status = self.runtime.status
        # One history of submissions: Undo in either panel takes back the newest, from either.
        self.history = SubmissionHistory()
        self.examples = ExamplesPanel(learner, auto_refresh=False, history=self.history)
        self.chat = ChatPanel(learner, history=self.history)
        self.weights = WeightsPanel(learner)
        self.learning = LearningPanel(learner, auto_refresh=False)
        self.live_loss = LiveLossPanel(learner, auto_refresh=False, height=280)
        self.offline = OfflinePanel(learner, auto_refresh=False)
        # The watch list answers on its own thread after each update; the poller only renders.
        self.watch = WatchPanel(learner, auto_refresh=False, background=auto_refresh)
        self.labeling = None if labeling is None else LabelingPanel(labeling, auto_refresh=False)
        self.header = w.HTML()
        self._version: object = None
        self._ticks = 0

        tabs: list[w.Widget] = [self.examples, self.chat, self.weights, self.watch]
        titles = ["Examples", "Chat", "Weights", "Watch"]
        if self.labeling is not None:
            tabs.append(self.labeling)
            titles.append("Labeling")
        self.tabs = w.Tab(tabs)
        for i, title in enumerate(titles):
            self.tabs.set_title(i, title)
        self._watch_title = "Watch"
        self.tabs.add_class("wb-tabs")
        right = w.VBox([self.live_loss, self.learning, self.offline])
        right.add_class("wb-right")
        grid = w.GridBox(
            [self.tabs, right],
            layout=w.Layout(
                grid_template_columns="minmax(0, 11fr) minmax(0, 10fr)",
                grid_gap="0 12px",
                align_items="flex-start",
                width="100%",
            ),
        )
        super().__init__([style_widget(), row(self.header, self.status), grid])
        self.add_class("wb-workbench")
        self._show_header()
        self.poller = self.runtime.poll(self.refresh, interval, start=auto_refresh)

    @property
    def panels(self) -> tuple[Any, ...]:
        """Every panel shown: examples, chat, weights, watch, learning, live loss, offline
        (, labeling)."""
        shown = (
            self.examples,
            self.chat,
            self.weights,
            self.watch,
            self.learning,
            self.live_loss,
            self.offline,
        )
        return shown if self.labeling is None else (*shown, self.labeling)

    @property
    def last_traceback(self) -> str | None:
        """The traceback of the Workbench's own last error; each panel keeps its own."""
        return self.runtime.last_traceback

    @guarded
    def refresh(self) -> None:
        """Refresh every panel once from the learner (what the poller does each tick)."""
        stats = self.learning.refresh()
        self.live_loss.refresh()
        self.offline.refresh()
        self.watch.refresh()
        self.chat.sync_history()  # cheap: re-rendered only when the shared history changed
        self.examples.sync_history()
        changed = self.watch.changed_count
        watch_title = f"Watch ({changed} changed)" if changed else "Watch"
        if watch_title != self._watch_title:
            self._watch_title = watch_title
            self.tabs.set_title(3, watch_title)
        # The table is a database read: every other tick is fresh enough for statuses.
        if self._ticks % 2 == 0:
            self.examples.refresh()
            if self.labeling is not None:
                self.labeling.refresh()
        self._ticks += 1
        version = stats.get("version") if isinstance(stats, dict) else None
        if version != self._version:  # new weights published: the summary may have changed
            self._version = version
            self.weights.refresh()
            self.chat.refresh()  # new weights may bring or drop a chat template
            self._show_header()

    def _show_header(self) -> None:
        info = self.learner.describe()
        self.header.value = (
            "<b>Markovian workbench</b> <span style='color:#555'>· "
            f"{html.escape(str(info.get('family')))} · {format_count(info.get('parameters', 0))} "
            f"parameters · {html.escape(str(info.get('dtype')))} · {html.escape(str(info.get('device')))}"
            # which path answers in Chat, and why on hover (describe()["inference_detail"])
            f" · <span title='{html.escape(str(info.get('inference_detail', '')), quote=True)}'>"
            f"{html.escape(str(info.get('inference', '?')))} inference</span>"
            "</span>&nbsp;"
        )

    def static_figure(self) -> go.Figure:
        """The loss plot as a plain plotly ``Figure`` (for saved notebooks)."""
        return self.live_loss.static_figure()

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until every panel's requests to the learner are done (tests, scripts)."""
        return all(p.wait(timeout) for p in self.panels)

    def close(self) -> None:
        # Widget.__del__ calls close(), also on an object whose __init__ failed half-way.
        if (runtime := getattr(self, "runtime", None)) is not None:
            runtime.close()
        names = ("examples", "chat", "weights", "watch", "learning", "live_loss", "offline")
        for name in (*names, "labeling"):
            if (panel := getattr(self, name, None)) is not None:
                panel.close()
        super().close()
