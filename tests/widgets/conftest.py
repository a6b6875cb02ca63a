"""A real learner on the tiny model for the panel tests; closed after each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from workbench.learner import LearningConfig, OnlineLearner
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer


def make_learner(session: Path, **config: object) -> OnlineLearner:
    settings: dict[str, object] = {
        "session_dir": session,
        "checkpoint_frequency": None,
        "learning_rate": 3e-3,
        "update_frequency": 2,
    }
    settings.update(config)
    return OnlineLearner(
        Transformer(ModelConfig.preset("tiny-llama"), seed=0),
        ByteTokenizer(),
        LearningConfig(**settings),  # type: ignore[arg-type]
    )


@pytest.fixture
def learner(tmp_path: Path) -> Iterator[OnlineLearner]:
    lrn = make_learner(tmp_path / "session")
    try:
        yield lrn
    finally:
        lrn.close(checkpoint=False)
