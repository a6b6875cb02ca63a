"""Labeling with the model in the loop: the learner suggests labels and learns from answers.

Core only (no widgets, plotting or MCP): items, label scoring and calibration, acquisition
order, the session with its SQLite tables, and export. The panel (``workbench.widgets``) and
the MCP tools (``workbench.mcp``) are skins over ``LabelingSession``.
"""

from __future__ import annotations

from workbench.labeling.acquisition import ORDERS, entropy, margin
from workbench.labeling.items import Item, LabelingError, load_items
from workbench.labeling.scoring import PromptFormat, calibrate, reference_scores, score_labels
from workbench.labeling.session import LabelingSession, Suggestion
from workbench.labeling.table import Answer

__all__ = [
    "ORDERS",
    "Answer",
    "Item",
    "LabelingError",
    "LabelingSession",
    "PromptFormat",
    "Suggestion",
    "calibrate",
    "entropy",
    "load_items",
    "margin",
    "reference_scores",
    "score_labels",
]
