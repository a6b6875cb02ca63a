"""Builders shared by the labeling tests: tiny random learners, with or without a chat template."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from workbench.learner import LearningConfig, OnlineLearner
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def make_learner(
    session: Path | None,
    preset: str = "tiny-llama",
    chat: bool = False,
    seed: int = 0,
    **config: Any,
) -> OnlineLearner:
    defaults: dict[str, Any] = dict(
        checkpoint_frequency=None, learning_rate=3e-3, seed=seed, enabled=False
    )
    defaults.update(config)
    tok = ByteTokenizer()
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    cfg = LearningConfig(session_dir=session, **defaults)
    return OnlineLearner(Transformer(ModelConfig.preset(preset), seed=seed), tok, cfg)


def random_texts(rng: random.Random, n: int, low: int = 3, high: int = 40) -> list[str]:
    alphabet = "abcdefghijklmnopqrstuvwxyz ,.!?éü"
    return [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high))).strip() or "x"
        for _ in range(n)
    ]
