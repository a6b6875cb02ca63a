"""Model configuration: one dataclass for both families, plus named presets.

The config is plain data. It knows nothing of files: the formats package reads a Hugging Face
``config.json`` or GGUF metadata and builds a ``ModelConfig`` from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Family = Literal["gpt2", "llama"]
FAMILIES: tuple[Family, ...] = ("gpt2", "llama")


class ModelConfigError(ValueError):
    """A model configuration is invalid; the message names the field and the fix."""


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a decoder-only transformer.

    Examples
    --------
    >>> cfg = ModelConfig.preset("tiny-llama")
    >>> cfg.family, cfg.head_dim, cfg.n_kv_head
    ('llama', 32, 2)
    >>> ModelConfig(family="gpt2", n_embd=10, n_head=3)
    Traceback (most recent call last):
    ...
    workbench.models.config.ModelConfigError: n_embd (10) must be divisible by n_head (3)
    """

    family: Family = (
        "gpt2"  # gpt2: learned positions, LayerNorm, GELU; llama: RoPE, RMSNorm, SwiGLU
    )
    vocab_size: int = 257  # rows of the token embedding (and of the output head)
    n_ctx: int = 256  # longest sequence the model accepts (position table size for gpt2)
    n_embd: int = 192  # residual stream width
    n_layer: int = 4  # transformer blocks
    n_head: int = 6  # query heads
    n_kv_head: int | None = None  # key/value heads (grouped-query attention); None = n_head
    intermediate_size: int | None = (
        None  # MLP hidden width; None = 4*n_embd (gpt2) or 8/3*n_embd rounded (llama)
    )
    norm_eps: float = 1e-5  # LayerNorm / RMSNorm epsilon
    rope_theta: float = 10000.0  # RoPE base (llama only)
    tie_embeddings: bool = True  # output head shares the token embedding matrix
    bias: bool | None = (
        None  # biases in linear layers and norms; None = True for gpt2, False for llama
    )
    dropout: float = 0.0  # residual/attention/embedding dropout, active only in train mode

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ModelConfigError(f"family must be one of {FAMILIES}, got {self.family!r}")
        for name in ("vocab_size", "n_ctx", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ModelConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        kv = self.n_kv_head if self.n_kv_head is not None else self.n_head
        if kv <= 0 or self.n_head % kv:
            raise ModelConfigError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({kv})")
        if self.family == "gpt2" and kv != self.n_head:
            raise ModelConfigError("gpt2 has no grouped-query attention: leave n_kv_head unset")
        if self.head_dim % 2 and self.family == "llama":
            raise ModelConfigError(f"RoPE needs an even head_dim, got {self.head_dim}")
        if self.intermediate_size is not None and self.intermediate_size <= 0:
            raise ModelConfigError(
                f"intermediate_size must be positive, got {self.intermediate_size}"
            )
        if not (self.norm_eps > 0 and self.rope_theta > 0):
            raise ModelConfigError("norm_eps and rope_theta must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head if self.n_kv_head is not None else self.n_head

    @property
    def mlp_width(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        if self.family == "gpt2":
            return 4 * self.n_embd
        return 64 * ((8 * self.n_embd // 3 + 63) // 64)

    @property
    def use_bias(self) -> bool:
        return self.family == "gpt2" if self.bias is None else self.bias

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build a config from a dict, refusing unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelConfigError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named configuration; keyword arguments override its fields."""
        try:
            base = PRESETS[name]
        except KeyError:
            raise ModelConfigError(
                f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}"
            ) from None
        return dataclasses.replace(base, **overrides)


PRESETS: dict[str, ModelConfig] = {
    # ~1.9M parameters on the byte tokenizer: tests and demos.
    "tiny-gpt2": ModelConfig(
        family="gpt2", vocab_size=257, n_ctx=256, n_embd=192, n_layer=4, n_head=6
    ),
    # ~1.6M parameters, GQA 6:2, tied head.
    "tiny-llama": ModelConfig(
        family="llama",
        vocab_size=257,
        n_ctx=256,
        n_embd=192,
        n_layer=4,
        n_head=6,
        n_kv_head=2,
        intermediate_size=512,
    ),
    "gpt2": ModelConfig(
        family="gpt2", vocab_size=50257, n_ctx=1024, n_embd=768, n_layer=12, n_head=12
    ),
    "smollm2-135m": ModelConfig(
        family="llama",
        vocab_size=49152,
        n_ctx=8192,
        n_embd=576,
        n_layer=30,
        n_head=9,
        n_kv_head=3,
        intermediate_size=1536,
        rope_theta=100000.0,
    ),
}
