"""Small builders shared by the learner tests."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

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


def same(a: Any, b: Any) -> bool:
    """Equal all the way down: tensors by ``torch.equal``, dicts by keys and values, lists and
    tuples item by item, anything else by ``==`` (objects without ``__eq__``: the same object)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
