"""Shared builders for the offline-training tests: a seeded JSONL and a tiny config."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.train import TrainConfig


def write_examples(path: Path, n: int = 11, seed: int = 0) -> Path:
    """``n`` supervised and plain examples of different lengths and weights 0.1, 1 and 5, so a
    global batch split over two ranks gives unequal weight sums and unequal padding."""
    rnd = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            text = f"q{i} " + "".join(rnd.choice("abcdef ") for _ in range(rnd.randint(1, 24)))
            target = None if i % 4 == 3 else f"answer {i}"
            weight = rnd.choice([0.1, 1.0, 5.0])
            f.write(json.dumps({"input": text, "target": target, "weight": weight}) + "\n")
    return path


def config(data: Path, out: Path, **kw: Any) -> TrainConfig:
    values: dict[str, Any] = dict(
        model="preset:tiny-llama",
        data=str(data),
        out=str(out),
        steps=4,
        global_batch=5,
        max_len=32,
        lr=1e-3,
        max_grad_norm=0.5,
        weight_decay=0.1,
        checkpoint_every=2,
    )
    values.update(kw)
    return TrainConfig(**values)


def state_of(path: Path) -> dict[str, np.ndarray]:
    from workbench.formats import load_model

    model, _ = load_model(path)
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def dcp_model_state(folder: Path) -> dict[str, torch.Tensor]:
    """A DCP checkpoint's model weights, loaded in this process (no process group)."""
    import warnings

    import torch.distributed.checkpoint as dcp

    from workbench.models import ModelConfig, Transformer

    model = Transformer(ModelConfig.preset("tiny-llama"), seed=123)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load({"model": sd}, checkpoint_id=str(folder))
    return sd
