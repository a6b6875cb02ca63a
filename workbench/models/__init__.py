"""Decoder-only transformers of seven families, their configuration and decoding."""

from __future__ import annotations

from workbench.models.config import FAMILIES, PRESETS, Family, ModelConfig, ModelConfigError
from workbench.models.generation import EarlyStopping, TokenCallback, beam_search
from workbench.models.transformer import KVCache, Transformer

__all__ = [
    "FAMILIES",
    "PRESETS",
    "EarlyStopping",
    "Family",
    "KVCache",
    "ModelConfig",
    "ModelConfigError",
    "TokenCallback",
    "Transformer",
    "beam_search",
]
