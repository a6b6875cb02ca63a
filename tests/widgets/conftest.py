"""A real learner on the tiny model for the panel tests; closed after each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.learner.helpers import make_learner
from workbench.learner import OnlineLearner

# Two new examples per background update: the panel tests see one happen without waiting long.
UPDATE_FREQUENCY = 2


@pytest.fixture
def learner(tmp_path: Path) -> Iterator[OnlineLearner]:
    lrn = make_learner(tmp_path / "session", update_frequency=UPDATE_FREQUENCY)
    try:
        yield lrn
    finally:
        lrn.close(checkpoint=False)
