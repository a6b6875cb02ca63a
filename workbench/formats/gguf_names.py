"""llama.cpp's GGUF tensor names for every family, and its q/k row permutation.

Tensor names follow ``gguf.constants.TENSOR_NAMES`` (``blk.{bid}.attn_q`` …) and map to ours
through plain dicts. llama.cpp's converter (``LlamaModel.permute`` in ``convert_hf_to_gguf.py``)
reorders the rows of q and k within each head of a ``llama`` model from Hugging Face's
half-split RoPE layout to interleaved pairs; ``unpermute_qk`` undoes it, ``permute_qk`` redoes
it on write. The other rotary architectures (qwen2, qwen3, phi3, gemma2, gemma3) use
llama.cpp's NEOX rotation, our layout, and are not permuted. GPT-2's converter already
transposes Conv1D weights to ``[out, in]``, which is our layout. Phi-3 keeps Hugging Face's
fused tensors: ``attn_qkv`` (q, k, v rows) and ``ffn_up`` (gate, then up rows), split on load
and concatenated on save. Gemma's norm gains are stored as ``1 + w``, which is what we keep.

The metadata keys are :mod:`gguf_config`'s (hyperparameters) and :mod:`gguf_vocab`'s
(tokenizer, carried keys); their public names are re-exported here.
"""

from __future__ import annotations

from torch import Tensor

from workbench.formats._common import expand_layers
from workbench.formats.gguf_config import (
    ROPE_FREQS,
    WORKBENCH_CONFIG_KEY,
    config_from_metadata,
    config_to_metadata,
    derived_tensors,
)
from workbench.formats.gguf_vocab import (
    CHAT_TEMPLATE_KEY,
    DERIVED_GENERAL_KEYS,
    SPECIAL_ID_KEYS,
    WORKBENCH_TOKENIZER_KEY,
    _byte_alphabet,
    carried_metadata,
    chat_template_from_metadata,
    llama_cpp_pre,
    tokenizer_from_metadata,
    tokenizer_to_metadata,
)
from workbench.models.config import ModelConfig

__all__ = [
    "CHAT_TEMPLATE_KEY",
    "DERIVED_GENERAL_KEYS",
    "FROM_GGUF",
    "FUSED_FROM_GGUF",
    "ROPE_FREQS",
    "SPECIAL_ID_KEYS",
    "WORKBENCH_CONFIG_KEY",
    "WORKBENCH_TOKENIZER_KEY",
    "_byte_alphabet",
    "carried_metadata",
    "chat_template_from_metadata",
    "config_from_metadata",
    "config_to_metadata",
    "derived_tensors",
    "fused_gguf_map",
    "gguf_name_map",
    "llama_cpp_pre",
    "permute_qk",
    "permuted_heads",
    "tokenizer_from_metadata",
    "tokenizer_to_metadata",
    "unpermute_qk",
]

_LLAMA_FROM_GGUF: dict[str, str] = {
    "token_embd.weight": "tok_emb.weight",
    "blk.{i}.attn_norm.weight": "blocks.{i}.attn_norm.weight",
    "blk.{i}.attn_q.weight": "blocks.{i}.attn.q.weight",
    "blk.{i}.attn_q.bias": "blocks.{i}.attn.q.bias",
    "blk.{i}.attn_k.weight": "blocks.{i}.attn.k.weight",
    "blk.{i}.attn_k.bias": "blocks.{i}.attn.k.bias",
    "blk.{i}.attn_v.weight": "blocks.{i}.attn.v.weight",
    "blk.{i}.attn_v.bias": "blocks.{i}.attn.v.bias",
    "blk.{i}.attn_output.weight": "blocks.{i}.attn.out.weight",
    "blk.{i}.attn_output.bias": "blocks.{i}.attn.out.bias",
    "blk.{i}.ffn_norm.weight": "blocks.{i}.mlp_norm.weight",
    "blk.{i}.ffn_gate.weight": "blocks.{i}.mlp.gate.weight",
    "blk.{i}.ffn_up.weight": "blocks.{i}.mlp.up.weight",
    "blk.{i}.ffn_down.weight": "blocks.{i}.mlp.down.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
}
_GPT2_FROM_GGUF: dict[str, str] = {
    "token_embd.weight": "tok_emb.weight",
    "position_embd.weight": "pos_emb.weight",
    "blk.{i}.attn_norm.weight": "blocks.{i}.attn_norm.weight",
    "blk.{i}.attn_norm.bias": "blocks.{i}.attn_norm.bias",
    "blk.{i}.attn_qkv.weight": "blocks.{i}.attn.qkv.weight",
    "blk.{i}.attn_qkv.bias": "blocks.{i}.attn.qkv.bias",
    "blk.{i}.attn_output.weight": "blocks.{i}.attn.out.weight",
    "blk.{i}.attn_output.bias": "blocks.{i}.attn.out.bias",
    "blk.{i}.ffn_norm.weight": "blocks.{i}.mlp_norm.weight",
    "blk.{i}.ffn_norm.bias": "blocks.{i}.mlp_norm.bias",
    "blk.{i}.ffn_up.weight": "blocks.{i}.mlp.up.weight",
    "blk.{i}.ffn_up.bias": "blocks.{i}.mlp.up.bias",
    "blk.{i}.ffn_down.weight": "blocks.{i}.mlp.down.weight",
    "blk.{i}.ffn_down.bias": "blocks.{i}.mlp.down.bias",
    "output_norm.weight": "norm.weight",
    "output_norm.bias": "norm.bias",
    "output.weight": "lm_head.weight",
}
_QK_NORMS = {
    "blk.{i}.attn_q_norm.weight": "blocks.{i}.attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "blocks.{i}.attn.k_norm.weight",
}
# Gemma: "ffn_norm" is the MLP's input norm, the two post-norms have names of their own.
_GEMMA_FROM_GGUF: dict[str, str] = {
    **{k: v for k, v in _LLAMA_FROM_GGUF.items() if "bias" not in k},
    "blk.{i}.post_attention_norm.weight": "blocks.{i}.attn_post_norm.weight",
    "blk.{i}.post_ffw_norm.weight": "blocks.{i}.mlp_post_norm.weight",
}
_PHI3_FROM_GGUF: dict[str, str] = {
    k: v
    for k, v in _LLAMA_FROM_GGUF.items()
    if not any(p in k for p in ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"))
}
FROM_GGUF: dict[str, dict[str, str]] = {
    "llama": _LLAMA_FROM_GGUF,
    "gpt2": _GPT2_FROM_GGUF,
    "qwen2": _LLAMA_FROM_GGUF,
    "qwen3": {**_LLAMA_FROM_GGUF, **_QK_NORMS},
    "phi3": _PHI3_FROM_GGUF,
    "gemma2": _GEMMA_FROM_GGUF,
    "gemma3": {**_GEMMA_FROM_GGUF, **_QK_NORMS},
}
# Fused llama.cpp tensor → our tensors, concatenated along rows in this order.
FUSED_FROM_GGUF: dict[str, dict[str, tuple[str, ...]]] = {
    "phi3": {
        "blk.{i}.attn_qkv.weight": (
            "blocks.{i}.attn.q.weight",
            "blocks.{i}.attn.k.weight",
            "blocks.{i}.attn.v.weight",
        ),
        "blk.{i}.ffn_up.weight": ("blocks.{i}.mlp.gate.weight", "blocks.{i}.mlp.up.weight"),
    }
}


def gguf_name_map(cfg: ModelConfig) -> dict[str, str]:
    """Every llama.cpp tensor name of ``cfg``'s layout → our name (layers expanded)."""
    return expand_layers(FROM_GGUF[cfg.family], cfg.n_layer)


def fused_gguf_map(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Fused llama.cpp name → the names of ours it concatenates (layers expanded)."""
    return {
        name.format(i=i): tuple(o.format(i=i) for o in ours)
        for name, ours in FUSED_FROM_GGUF.get(cfg.family, {}).items()
        for i in range(cfg.n_layer)
    }


def permuted_heads(cfg: ModelConfig, ours: str) -> int | None:
    """Heads whose rows llama.cpp permuted in ``ours`` (None: not a permuted tensor)."""
    if cfg.family != "llama":
        return None
    if ".attn.q." in ours:
        return cfg.n_head
    if ".attn.k." in ours:
        return cfg.kv_heads
    return None


def permute_qk(w: Tensor, n_head: int) -> Tensor:
    """Hugging Face rows → llama.cpp rows, as ``convert_hf_to_gguf.LlamaModel.permute``."""
    hd = w.shape[0] // n_head
    return w.reshape(n_head, 2, hd // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_qk(w: Tensor, n_head: int) -> Tensor:
    """llama.cpp rows → Hugging Face rows (the inverse of ``permute_qk``)."""
    hd = w.shape[0] // n_head
    return w.reshape(n_head, hd // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
