"""Decoder-only transformers (GPT-2 and Llama families) and their configuration."""

from __future__ import annotations

from workbench.models.config import FAMILIES, PRESETS, Family, ModelConfig, ModelConfigError
from workbench.models.transformer import KVCache, Transformer

__all__ = [
    "FAMILIES",
    "PRESETS",
    "Family",
    "KVCache",
    "ModelConfig",
    "ModelConfigError",
    "Transformer",
]
