"""Hugging Face parameter names for every model family, as plain dicts.

``{i}`` stands for the layer index. Three conversions besides renaming, each exact:

- GPT-2 checkpoints store their linear layers as ``Conv1D`` with weights ``[in, out]``; ours
  are ``nn.Linear`` ``[out, in]``, so those are transposed;
- Phi-3 fuses q, k and v (``qkv_proj``) and gate and up (``gate_up_proj``) row-wise; they are
  split on load (views, no copy) and concatenated on save, so a round trip is bit-exact;
- Gemma stores a norm's ``w`` and multiplies by ``1 + w`` (in float32); we keep the gain
  ``1 + w`` itself (as llama.cpp's files do), so a load adds 1 in float32, exactly the value
  transformers computes, and a save subtracts it (exact for gains of at least 0.5).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from workbench.formats._common import expand_layers
from workbench.models.config import ModelConfig

# Hugging Face name → our name.
_GPT2_FROM_HF: dict[str, str] = {
    "wte.weight": "tok_emb.weight",
    "wpe.weight": "pos_emb.weight",
    "h.{i}.ln_1.weight": "blocks.{i}.attn_norm.weight",
    "h.{i}.ln_1.bias": "blocks.{i}.attn_norm.bias",
    "h.{i}.attn.c_attn.weight": "blocks.{i}.attn.qkv.weight",
    "h.{i}.attn.c_attn.bias": "blocks.{i}.attn.qkv.bias",
    "h.{i}.attn.c_proj.weight": "blocks.{i}.attn.out.weight",
    "h.{i}.attn.c_proj.bias": "blocks.{i}.attn.out.bias",
    "h.{i}.ln_2.weight": "blocks.{i}.mlp_norm.weight",
    "h.{i}.ln_2.bias": "blocks.{i}.mlp_norm.bias",
    "h.{i}.mlp.c_fc.weight": "blocks.{i}.mlp.up.weight",
    "h.{i}.mlp.c_fc.bias": "blocks.{i}.mlp.up.bias",
    "h.{i}.mlp.c_proj.weight": "blocks.{i}.mlp.down.weight",
    "h.{i}.mlp.c_proj.bias": "blocks.{i}.mlp.down.bias",
    "ln_f.weight": "norm.weight",
    "ln_f.bias": "norm.bias",
    "lm_head.weight": "lm_head.weight",
}
# Conv1D weights, stored [in, out].
_GPT2_TRANSPOSED = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)
# Buffers that GPT-2 checkpoints carry and that hold no learned values.
_GPT2_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")

_LLAMA_FROM_HF: dict[str, str] = {
    "model.embed_tokens.weight": "tok_emb.weight",
    "model.layers.{i}.input_layernorm.weight": "blocks.{i}.attn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blocks.{i}.attn.q.weight",
    "model.layers.{i}.self_attn.q_proj.bias": "blocks.{i}.attn.q.bias",
    "model.layers.{i}.self_attn.k_proj.weight": "blocks.{i}.attn.k.weight",
    "model.layers.{i}.self_attn.k_proj.bias": "blocks.{i}.attn.k.bias",
    "model.layers.{i}.self_attn.v_proj.weight": "blocks.{i}.attn.v.weight",
    "model.layers.{i}.self_attn.v_proj.bias": "blocks.{i}.attn.v.bias",
    "model.layers.{i}.self_attn.o_proj.weight": "blocks.{i}.attn.out.weight",
    "model.layers.{i}.self_attn.o_proj.bias": "blocks.{i}.attn.out.bias",
    "model.layers.{i}.post_attention_layernorm.weight": "blocks.{i}.mlp_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blocks.{i}.mlp.gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blocks.{i}.mlp.up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blocks.{i}.mlp.down.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_LLAMA_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)

_QK_NORMS = {
    "model.layers.{i}.self_attn.q_norm.weight": "blocks.{i}.attn.q_norm.weight",
    "model.layers.{i}.self_attn.k_norm.weight": "blocks.{i}.attn.k_norm.weight",
}
# Gemma's four norms: "post_attention_layernorm" is the attention output's norm here, not the
# MLP's input norm as in Llama.
_GEMMA_FROM_HF: dict[str, str] = {
    **{k: v for k, v in _LLAMA_FROM_HF.items() if "post_attention" not in k},
    "model.layers.{i}.post_attention_layernorm.weight": "blocks.{i}.attn_post_norm.weight",
    "model.layers.{i}.pre_feedforward_layernorm.weight": "blocks.{i}.mlp_norm.weight",
    "model.layers.{i}.post_feedforward_layernorm.weight": "blocks.{i}.mlp_post_norm.weight",
}
_PHI3_FROM_HF: dict[str, str] = {
    k: v
    for k, v in _LLAMA_FROM_HF.items()
    if not any(p in k for p in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"))
}
# Fused Hugging Face tensor → our tensors, concatenated along rows in this order.
_PHI3_FUSED: dict[str, tuple[str, ...]] = {
    "model.layers.{i}.self_attn.qkv_proj.weight": (
        "blocks.{i}.attn.q.weight",
        "blocks.{i}.attn.k.weight",
        "blocks.{i}.attn.v.weight",
    ),
    "model.layers.{i}.mlp.gate_up_proj.weight": (
        "blocks.{i}.mlp.gate.weight",
        "blocks.{i}.mlp.up.weight",
    ),
}

FROM_HF: dict[str, dict[str, str]] = {
    "gpt2": _GPT2_FROM_HF,
    "llama": _LLAMA_FROM_HF,
    "qwen2": _LLAMA_FROM_HF,
    "qwen3": {**_LLAMA_FROM_HF, **_QK_NORMS},
    "phi3": _PHI3_FROM_HF,
    "gemma2": _GEMMA_FROM_HF,
    "gemma3": {**_GEMMA_FROM_HF, **_QK_NORMS},
}
FUSED_FROM_HF: dict[str, dict[str, tuple[str, ...]]] = {"phi3": _PHI3_FUSED}


def hf_name_map(cfg: ModelConfig) -> dict[str, str]:
    """Every Hugging Face name of ``cfg``'s layout → our name (layer indices expanded)."""
    return expand_layers(FROM_HF[cfg.family], cfg.n_layer)


def fused_name_map(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Fused Hugging Face name → the names of ours it concatenates (layers expanded)."""
    fused = FUSED_FROM_HF.get(cfg.family, {})
    return {
        hf.format(i=i): tuple(o.format(i=i) for o in ours)
        for hf, ours in fused.items()
        for i in range(cfg.n_layer)
    }


def split_sizes(name: str, cfg: ModelConfig) -> int:
    """Rows of our tensor ``name`` (a part of a fused one)."""
    if ".attn.q." in name:
        return cfg.n_head * cfg.head_dim
    if ".attn.k." in name or ".attn.v." in name:
        return cfg.kv_heads * cfg.head_dim
    return cfg.mlp_width


def _shifted(name: str, cfg: ModelConfig) -> bool:
    """Whether ``name`` (ours) is a Gemma norm gain, stored as ``gain - 1`` by Hugging Face."""
    return cfg.is_gemma and name.endswith("norm.weight")


def is_transposed(hf_name: str, cfg: ModelConfig) -> bool:
    """True for GPT-2 Conv1D weights, stored ``[in, out]``."""
    return cfg.family == "gpt2" and hf_name.endswith(_GPT2_TRANSPOSED)


def normalize_hf_name(name: str, cfg: ModelConfig) -> str | None:
    """Strip GPT-2's optional ``transformer.`` prefix; None for buffers to ignore."""
    if cfg.family == "gpt2":
        if name.startswith("transformer."):
            name = name[len("transformer.") :]
        if name.endswith(_GPT2_IGNORED_SUFFIXES):
            return None
    elif name.endswith(_LLAMA_IGNORED_SUFFIXES):
        return None
    return name


def from_hf(tensors: Mapping[str, Tensor], cfg: ModelConfig) -> tuple[dict[str, Tensor], list[str]]:
    """Rename a Hugging Face state dict to ours.

    Returns the renamed tensors and the names that have no place in our layout (the caller
    decides whether that is an error). A tied ``lm_head.weight`` is dropped when the config ties
    embeddings.
    """
    name_map, fused = hf_name_map(cfg), fused_name_map(cfg)
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for raw, tensor in tensors.items():
        name = normalize_hf_name(raw, cfg)
        if name is None:
            continue
        if name in fused:
            sizes = [split_sizes(o, cfg) for o in fused[name]]
            if tensor.ndim != 2 or tensor.shape[0] != sum(sizes):
                unknown.append(f"{raw} (shape {tuple(tensor.shape)}, {sum(sizes)} rows expected)")
                continue
            out.update(zip(fused[name], tensor.split(sizes), strict=True))
            continue
        ours = name_map.get(name)
        if ours is None:
            unknown.append(raw)
            continue
        if ours == "lm_head.weight" and cfg.tie_embeddings:
            continue
        if _shifted(ours, cfg):
            tensor = tensor.float() + 1.0  # what transformers multiplies by
        out[ours] = tensor.t() if is_transposed(name, cfg) else tensor
    return out, unknown


def to_hf(state: Mapping[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Rename our state dict to Hugging Face names (GPT-2 Conv1D weights transposed back)."""
    inverse = {ours: hf for hf, ours in hf_name_map(cfg).items()}
    out: dict[str, Tensor] = {}
    for fused, parts in fused_name_map(cfg).items():
        if all(p in state for p in parts):
            out[fused] = torch.cat([state[p] for p in parts])
    done = {p for parts in fused_name_map(cfg).values() for p in parts}
    for name, tensor in state.items():
        if name in done:
            continue
        hf = inverse.get(name)
        if hf is None:
            raise KeyError(f"parameter {name!r} has no Hugging Face name for family {cfg.family}")
        if _shifted(name, cfg):
            tensor = (tensor.float() - 1.0).to(tensor.dtype)
        out[hf] = tensor.t().contiguous() if is_transposed(hf, cfg) else tensor
    return out
