"""Fixtures of the labeling tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.labeling.helpers import make_learner
from workbench.learner import OnlineLearner


@pytest.fixture
def learner(tmp_path: Path) -> Iterator[OnlineLearner]:
    """A tiny random learner (``make_learner(tmp_path)``), closed after the test."""
    learner = make_learner(tmp_path)
    yield learner
    learner.close()
