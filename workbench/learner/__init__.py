"""The online learner: weighted examples in, background updates, published weights out."""

from __future__ import annotations

from workbench.learner._offline_job import OfflineJob, OfflineState
from workbench.learner.config import LearnerError, LearningConfig, TrainingExample
from workbench.learner.metrics import MetricsLog, UpdateRecord
from workbench.learner.online import AddResult, LearnerFailed, LearnerState, OnlineLearner
from workbench.learner.protocol import Learner

__all__ = [
    "AddResult",
    "Learner",
    "LearnerError",
    "LearnerFailed",
    "LearnerState",
    "LearningConfig",
    "MetricsLog",
    "OfflineJob",
    "OfflineState",
    "OnlineLearner",
    "TrainingExample",
    "UpdateRecord",
]
