"""Hugging Face parameter names for our two model families, as plain dicts.

``{i}`` stands for the layer index. GPT-2 checkpoints store their linear layers as ``Conv1D``
with weights ``[in, out]``; ours are ``nn.Linear`` ``[out, in]``, so those are transposed.
"""

from __future__ import annotations

from collections.abc import Mapping

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

FROM_HF: dict[str, dict[str, str]] = {"gpt2": _GPT2_FROM_HF, "llama": _LLAMA_FROM_HF}


def hf_name_map(cfg: ModelConfig) -> dict[str, str]:
    """Every Hugging Face name of ``cfg``'s layout → our name (layer indices expanded)."""
    return expand_layers(FROM_HF[cfg.family], cfg.n_layer)


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
    name_map = hf_name_map(cfg)
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for raw, tensor in tensors.items():
        name = normalize_hf_name(raw, cfg)
        if name is None:
            continue
        ours = name_map.get(name)
        if ours is None:
            unknown.append(raw)
            continue
        if ours == "lm_head.weight" and cfg.tie_embeddings:
            continue
        out[ours] = tensor.t() if is_transposed(name, cfg) else tensor
    return out, unknown


def to_hf(state: Mapping[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Rename our state dict to Hugging Face names (GPT-2 Conv1D weights transposed back)."""
    inverse = {ours: hf for hf, ours in hf_name_map(cfg).items()}
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        hf = inverse.get(name)
        if hf is None:
            raise KeyError(f"parameter {name!r} has no Hugging Face name for family {cfg.family}")
        out[hf] = tensor.t().contiguous() if is_transposed(hf, cfg) else tensor
    return out
