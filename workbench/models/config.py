"""Model configuration: one dataclass for every family, plus named presets.

The config is plain data. It knows nothing of files: the formats package reads a Hugging Face
``config.json`` or GGUF metadata and builds a ``ModelConfig`` from it.

A family names a file layout and fixes a few switches (norm kind, MLP activation, post-norms,
embedding scale); the fields below set the rest (biases, q/k norms, head width, sliding windows,
RoPE scaling, soft-capping), so a Mistral is a ``llama`` with a ``sliding_window``:

============ ========= ============== ================= ================================
family       norm      MLP            defaults          files (Hugging Face / llama.cpp)
============ ========= ============== ================= ================================
gpt2         LayerNorm GELU           biases            GPT2LMHeadModel / gpt2
llama        RMSNorm   SwiGLU         -                 Llama, Mistral / llama
qwen2        RMSNorm   SwiGLU         q/k/v biases      Qwen2 / qwen2
qwen3        RMSNorm   SwiGLU         q/k norms         Qwen3 / qwen3
phi3         RMSNorm   SwiGLU         -                 Phi3 (fused qkv, gate_up) / phi3
gemma2       RMSNorm+  GeGLU (tanh)   post-norms, √C    Gemma2 / gemma2
gemma3       RMSNorm+  GeGLU (tanh)   + q/k norms       Gemma3ForCausalLM / gemma3
============ ========= ============== ================= ================================

RMSNorm+: Gemma's norms multiply by ``1 + w`` in float32. We keep the gain itself (``1 + w``, as
llama.cpp's files do): Hugging Face's ``w`` is converted at the file boundary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Family = Literal["gpt2", "llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"]
FAMILIES: tuple[Family, ...] = ("gpt2", "llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3")
RopeScaling = Literal["none", "linear", "llama3"]
ROPE_SCALINGS: tuple[RopeScaling, ...] = ("none", "linear", "llama3")
GEMMA_FAMILIES = frozenset({"gemma2", "gemma3"})


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
        "gpt2"  # gpt2: learned positions, LayerNorm, GELU; the others: RoPE (see the table above)
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
    head_size: int | None = None  # width of one head (Qwen3, Gemma); None = n_embd // n_head
    qkv_bias: bool | None = None  # biases on q/k/v only; None = the family's (True for qwen2)
    qk_norm: bool | None = None  # RMSNorm per head on q and k; None = the family's (qwen3, gemma3)
    sliding_window: int | None = (
        None  # sliding layers see the last this-many keys (query's own too)
    )
    global_every: int = (
        0  # with a window: layer i is global when (i+1) % global_every == 0; 0: none
    )
    rope_scaling: RopeScaling = "none"  # scaling of the RoPE frequencies of global layers
    rope_factor: float = 1.0  # linear / llama3: how much longer the context became
    rope_low_freq_factor: float = 1.0  # llama3: wavelengths above original_ctx / this are scaled
    rope_high_freq_factor: float = 4.0  # llama3: wavelengths below original_ctx / this are kept
    rope_original_ctx: int = 8192  # llama3: the context the model was pretrained with
    rope_local_theta: float | None = None  # RoPE base of sliding layers (Gemma 3); None: rope_theta
    query_pre_attn_scalar: float | None = (
        None  # attention scores scaled by its -1/2 power; None: hd
    )
    attn_softcap: float | None = None  # attention scores become cap * tanh(score / cap) (Gemma 2)
    final_softcap: float | None = None  # logits become cap * tanh(logit / cap) (Gemma 2)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ModelConfigError(f"family must be one of {FAMILIES}, got {self.family!r}")
        for name in ("vocab_size", "n_ctx", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.head_size is not None:
            if not isinstance(self.head_size, int) or self.head_size <= 0:
                raise ModelConfigError(
                    f"head_size must be a positive integer, got {self.head_size!r}"
                )
        elif self.n_embd % self.n_head:
            raise ModelConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        kv = self.n_kv_head if self.n_kv_head is not None else self.n_head
        if kv <= 0 or self.n_head % kv:
            raise ModelConfigError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({kv})")
        if self.family == "gpt2" and kv != self.n_head:
            raise ModelConfigError("gpt2 has no grouped-query attention: leave n_kv_head unset")
        if self.head_dim % 2 and self.family != "gpt2":
            raise ModelConfigError(f"RoPE needs an even head_dim, got {self.head_dim}")
        self._check_switches()
        if self.intermediate_size is not None and self.intermediate_size <= 0:
            raise ModelConfigError(
                f"intermediate_size must be positive, got {self.intermediate_size}"
            )
        if not (self.norm_eps > 0 and self.rope_theta > 0):
            raise ModelConfigError("norm_eps and rope_theta must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    def _check_switches(self) -> None:
        if self.family == "gpt2":
            extras = [
                name
                for name in ("head_size", "qkv_bias", "qk_norm", "sliding_window")
                if getattr(self, name) is not None
            ]
            if extras or self.rope_scaling != "none" or self.rope_local_theta is not None:
                raise ModelConfigError(
                    f"gpt2 has none of {', '.join(extras) or 'rope settings'}: leave them unset"
                )
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ModelConfigError(f"sliding_window must be positive, got {self.sliding_window}")
        if self.global_every < 0:
            raise ModelConfigError(f"global_every must be >= 0, got {self.global_every}")
        if self.rope_scaling not in ROPE_SCALINGS:
            raise ModelConfigError(
                f"rope_scaling must be one of {ROPE_SCALINGS}, got {self.rope_scaling!r}"
            )
        if self.rope_scaling != "none" and not self.rope_factor > 0:
            raise ModelConfigError(f"rope_factor must be positive, got {self.rope_factor}")
        if self.rope_scaling == "llama3" and not (
            0 < self.rope_low_freq_factor < self.rope_high_freq_factor
            and self.rope_original_ctx > 0
        ):
            raise ModelConfigError(
                "llama3 rope scaling needs 0 < rope_low_freq_factor < rope_high_freq_factor and a "
                f"positive rope_original_ctx, got {self.rope_low_freq_factor}, "
                f"{self.rope_high_freq_factor}, {self.rope_original_ctx}"
            )
        for name in ("rope_local_theta", "query_pre_attn_scalar", "attn_softcap", "final_softcap"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ModelConfigError(f"{name} must be positive (or None), got {value}")

    @property
    def head_dim(self) -> int:
        return self.head_size if self.head_size is not None else self.n_embd // self.n_head

    @property
    def has_qkv_bias(self) -> bool:
        """Biases on the q, k and v projections (all linear layers' with ``use_bias``)."""
        own = self.family == "qwen2" if self.qkv_bias is None else self.qkv_bias
        return own or self.use_bias

    @property
    def has_qk_norm(self) -> bool:
        return self.family in ("qwen3", "gemma3") if self.qk_norm is None else self.qk_norm

    @property
    def is_gemma(self) -> bool:
        """Gemma's switches: float32 norm gains, GeGLU, post-norms, embeddings scaled by √C."""
        return self.family in GEMMA_FAMILIES

    def slides(self, layer: int) -> bool:
        """Whether ``layer`` attends within the sliding window (False: to every earlier key)."""
        if self.sliding_window is None:
            return False
        return self.global_every == 0 or (layer + 1) % self.global_every != 0

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
