from __future__ import annotations

import math

import pytest

from workbench.learner import LearnerError, LearningConfig, TrainingExample


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("learning_rate", 0.0, "learning_rate must be in"),
        ("learning_rate", math.nan, "finite"),
        ("learning_rate", True, "finite number"),
        ("learning_rate", "1e-3", "finite number"),
        ("update_frequency", 0, "update_frequency"),
        ("buffer_size", -3, "buffer_size"),
        ("loss_fn", "hinge", "loss_fn"),
        ("optimizer", "lion", "optimizer"),
        ("replay_fraction", 1.0, "replay_fraction"),
        ("max_grad_norm", -1.0, "max_grad_norm"),
        ("lr_schedule", "step", "lr_schedule"),
        ("checkpoint_frequency", 0, "checkpoint_frequency"),
    ],
)
def test_invalid_config_is_rejected(field: str, value: object, fragment: str) -> None:
    with pytest.raises(LearnerError, match=fragment):
        LearningConfig(**{field: value})


def test_defaults_follow_the_design() -> None:
    cfg = LearningConfig()
    assert (cfg.buffer_size, cfg.update_frequency, cfg.learning_rate) == (1000, 10, 1e-4)
    assert cfg.use_gpu and cfg.enabled and cfg.checkpoint_frequency == 100
    assert cfg.loss_fn == "cross_entropy" and cfg.weight_decay == 0.01 and cfg.max_grad_norm == 1.0


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(input=""), "non-empty"),
        (dict(input="x" * 100_001), "limit"),
        (dict(input="a", target=""), "non-empty"),
        (dict(input="a\x00b"), "NUL"),
        (dict(input="a", weight=0.0), "weight must be in"),
        (dict(input="a", weight=-1.0), "weight must be in"),
        (dict(input="a", weight=100.5), "weight must be in"),
        (dict(input="a", weight=math.inf), "finite"),
        (dict(input="a", weight=math.nan), "finite"),
        (dict(input="a", weight=True), "finite number"),
        (dict(input=3), "non-empty string"),
        (dict(input="a", id=""), "id must be"),
    ],
)
def test_invalid_examples_are_rejected(kwargs: dict, fragment: str) -> None:
    with pytest.raises(LearnerError, match=fragment):
        TrainingExample(**kwargs)


def test_examples_get_unique_ids() -> None:
    a, b = TrainingExample("x"), TrainingExample("x")
    assert a.id != b.id and TrainingExample("x", weight=100).weight == 100.0
