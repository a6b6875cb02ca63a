"""Cases for the fast int8 copy: prompts on which it must decode what float32 decodes (SmolLM2
tests; bench/fast_probes.json, which bench/generate.py reads too), and the tiny random models its
tests compare on."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from workbench.models import ModelConfig, Transformer

PROBES: list[str] = json.loads(
    (Path(__file__).resolve().parents[1] / "bench" / "fast_probes.json").read_text("utf-8")
)

# Grouped-query heads and q/k/v biases.
QWEN2 = ModelConfig(
    family="qwen2",
    vocab_size=257,
    n_ctx=128,
    n_embd=128,
    n_layer=2,
    n_head=4,
    n_kv_head=2,
    intermediate_size=256,
    tie_embeddings=False,
)


def random_model(cfg: ModelConfig, seed: int, noise_seed: int | None = None) -> Transformer:
    """A random model with norm gains and biases away from their init (so folding shows);
    ``noise_seed`` (default ``seed + 100``) draws the gains and biases."""
    model = Transformer(cfg, seed=seed).eval()
    gen = torch.Generator().manual_seed(seed + 100 if noise_seed is None else noise_seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5 if "norm" in name else p)
                if name.endswith("bias"):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model
