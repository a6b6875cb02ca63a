"""Small builders shared by the learner tests."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from workbench.demo import arithmetic_facts
from workbench.learner import LearningConfig, OnlineLearner
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer


def make_learner(
    session: Path | None, preset: str = "tiny-llama", seed: int = 0, **config: Any
) -> OnlineLearner:
    defaults: dict[str, Any] = dict(checkpoint_frequency=None, learning_rate=3e-3, seed=seed)
    defaults.update(config)
    cfg = LearningConfig(session_dir=session, **defaults)
    return OnlineLearner(Transformer(ModelConfig.preset(preset), seed=seed), ByteTokenizer(), cfg)


def task_loss(learner: OnlineLearner, facts: list[tuple[str, str]]) -> float:
    return statistics.fmean(learner.score(q, a)["loss"] for q, a in facts)


def weights_of(learner: OnlineLearner) -> dict[str, Any]:
    return {k: v.clone() for k, v in learner.model.state_dict().items()}


__all__ = ["arithmetic_facts", "make_learner", "task_loss", "weights_of"]
