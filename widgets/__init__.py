"""Notebook panels (ipywidgets + plotly) over the learner's public API.

``Workbench(learner)`` shows them together; each panel also works alone::

    from workbench.widgets import Workbench
    Workbench(learner)
    Workbench(learner, labeling=LabelingSession(learner, items, labels))  # + a Labeling tab

Panels call only the learner's public API (they are typed with the ``workbench.learner.Learner``
protocol), run anything that waits for the learner's worker on a background thread (clicks stay
responsive while it trains), and show every error in the panel's status line.
"""

from __future__ import annotations

from .chat import ChatPanel
from .examples import ExamplesPanel
from .labeling import LabelingPanel
from .learning import LearningPanel
from .live_loss import LiveLossPanel, LossSeries
from .offline import OfflinePanel
from .watch import WatchPanel
from .weights import WeightsPanel
from .workbench import Workbench

__all__ = [
    "ChatPanel",
    "ExamplesPanel",
    "LabelingPanel",
    "LearningPanel",
    "LiveLossPanel",
    "LossSeries",
    "OfflinePanel",
    "WatchPanel",
    "WeightsPanel",
    "Workbench",
]
