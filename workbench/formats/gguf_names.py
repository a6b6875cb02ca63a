"""llama.cpp's GGUF layout for our two families: tensor names, q/k permutation, metadata keys.

Tensor names follow ``gguf.constants.TENSOR_NAMES`` (``blk.{bid}.attn_q`` …) and map to ours
through plain dicts. llama.cpp's converter (``LlamaModel.permute`` in ``convert_hf_to_gguf.py``)
reorders the rows of q and k within each head from Hugging Face's half-split RoPE layout to
interleaved pairs; ``unpermute_qk`` undoes it, ``permute_qk`` redoes it on write. GPT-2's
converter already transposes Conv1D weights to ``[out, in]``, which is our layout.

This module also turns GGUF metadata into a ``ModelConfig`` and a tokenizer, and back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from workbench.formats._common import WeightLoadError, expand_layers
from workbench.models.config import ModelConfig, ModelConfigError
from workbench.tokenizers import (
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_USER_DEFINED,
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    TokenizerError,
    bpe_from_vocab,
)

# llama.cpp name → our name.
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
FROM_GGUF: dict[str, dict[str, str]] = {"llama": _LLAMA_FROM_GGUF, "gpt2": _GPT2_FROM_GGUF}

# Our ByteTokenizer has no GGUF model of its own; we store it as a byte-level "gpt2" vocabulary
# with no merges (which llama.cpp can run, giving the same ids) and mark it with this key so our
# reader rebuilds the exact ByteTokenizer.
WORKBENCH_TOKENIZER_KEY = "workbench.tokenizer"
# The exact ModelConfig as JSON: GGUF's standard keys store eps and rope base as float32, which
# would round 1e-5 and change logits in the last bits; this key keeps them exact.
WORKBENCH_CONFIG_KEY = "workbench.config"


def gguf_name_map(cfg: ModelConfig) -> dict[str, str]:
    """Every llama.cpp tensor name of ``cfg``'s layout → our name (layers expanded)."""
    return expand_layers(FROM_GGUF[cfg.family], cfg.n_layer)


def permute_qk(w: Tensor, n_head: int) -> Tensor:
    """Hugging Face rows → llama.cpp rows, as ``convert_hf_to_gguf.LlamaModel.permute``."""
    hd = w.shape[0] // n_head
    return w.reshape(n_head, 2, hd // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_qk(w: Tensor, n_head: int) -> Tensor:
    """llama.cpp rows → Hugging Face rows (the inverse of ``permute_qk``)."""
    hd = w.shape[0] // n_head
    return w.reshape(n_head, hd // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


# ---------------------------------------------------------------------------- config


def _get_int(md: Mapping[str, Any], key: str, default: int | None = None) -> int:
    v = md.get(key, default)
    if v is None:
        raise WeightLoadError(f"GGUF metadata lacks {key!r}, needed to build the model")
    if isinstance(v, bool) or not isinstance(v, int):
        raise WeightLoadError(f"GGUF metadata {key!r} must be an integer, got {v!r}")
    return v


def _get_float(md: Mapping[str, Any], key: str, default: float) -> float:
    v = md.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise WeightLoadError(f"GGUF metadata {key!r} must be a number, got {v!r}")
    return float(v)


def config_from_metadata(
    md: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]
) -> ModelConfig:
    """Build a ``ModelConfig`` from GGUF metadata and the tensor shapes (by GGUF name)."""
    arch = md.get("general.architecture")
    if arch not in FROM_GGUF:
        raise WeightLoadError(
            f"unsupported GGUF architecture {arch!r}; this loader reads 'llama' and 'gpt2'"
        )
    if WORKBENCH_CONFIG_KEY in md:
        try:
            cfg = ModelConfig.from_dict(json.loads(md[WORKBENCH_CONFIG_KEY]))
        except (ValueError, TypeError) as e:
            raise WeightLoadError(f"GGUF metadata {WORKBENCH_CONFIG_KEY!r} is invalid: {e}") from e
        if cfg.family != arch:
            raise WeightLoadError(f"{WORKBENCH_CONFIG_KEY!r} says {cfg.family}, the file {arch}")
        return cfg
    emb = shapes.get("token_embd.weight")
    if emb is None or len(emb) != 2:
        raise WeightLoadError(
            "GGUF file has no 2-D 'token_embd.weight'; cannot size the vocabulary"
        )
    n_embd = _get_int(md, f"{arch}.embedding_length")
    n_head = _get_int(md, f"{arch}.attention.head_count")
    fields: dict[str, Any] = {
        "family": arch,
        "vocab_size": emb[0],
        "n_ctx": _get_int(md, f"{arch}.context_length"),
        "n_embd": n_embd,
        "n_layer": _get_int(md, f"{arch}.block_count"),
        "n_head": n_head,
        "intermediate_size": _get_int(md, f"{arch}.feed_forward_length"),
        "tie_embeddings": "output.weight" not in shapes,
    }
    if arch == "llama":
        kv = _get_int(md, f"{arch}.attention.head_count_kv", n_head)
        fields["n_kv_head"] = None if kv == n_head else kv
        fields["norm_eps"] = _get_float(md, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
        fields["rope_theta"] = _get_float(md, f"{arch}.rope.freq_base", 10000.0)
        rot = md.get(f"{arch}.rope.dimension_count")
        if n_head > 0 and rot is not None and rot != n_embd // n_head:
            raise WeightLoadError(
                f"partial rotary embeddings ({rot} of {n_embd // n_head} dims) are not supported"
            )
        # None is the family's default (no biases for llama), so configs compare equal.
        fields["bias"] = True if "blk.0.attn_q.bias" in shapes else None
    else:
        fields["norm_eps"] = _get_float(md, f"{arch}.attention.layer_norm_epsilon", 1e-5)
        fields["bias"] = None if "blk.0.attn_qkv.bias" in shapes else False
    try:
        return ModelConfig(**fields)
    except ModelConfigError as e:
        raise WeightLoadError(f"GGUF metadata gives an invalid model config: {e}") from e


def config_to_metadata(cfg: ModelConfig) -> dict[str, tuple[str, Any]]:
    """The llama.cpp keys for ``cfg``, as ``key → (GGUF value type name, value)``."""
    a = cfg.family
    md: dict[str, tuple[str, Any]] = {
        f"{a}.context_length": ("UINT32", cfg.n_ctx),
        f"{a}.embedding_length": ("UINT32", cfg.n_embd),
        f"{a}.block_count": ("UINT32", cfg.n_layer),
        f"{a}.feed_forward_length": ("UINT32", cfg.mlp_width),
        f"{a}.attention.head_count": ("UINT32", cfg.n_head),
        f"{a}.vocab_size": ("UINT32", cfg.vocab_size),
        WORKBENCH_CONFIG_KEY: ("STRING", json.dumps(cfg.to_dict())),
    }
    if a == "llama":
        md[f"{a}.attention.head_count_kv"] = ("UINT32", cfg.kv_heads)
        md[f"{a}.attention.layer_norm_rms_epsilon"] = ("FLOAT32", cfg.norm_eps)
        md[f"{a}.rope.freq_base"] = ("FLOAT32", cfg.rope_theta)
        md[f"{a}.rope.dimension_count"] = ("UINT32", cfg.head_dim)
    else:
        md[f"{a}.attention.layer_norm_epsilon"] = ("FLOAT32", cfg.norm_eps)
    return md


# ---------------------------------------------------------------------------- tokenizer


def _byte_alphabet() -> list[str]:
    """GPT-2's printable spelling of each byte value, indexed by the byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def tokenizer_from_metadata(md: Mapping[str, Any]) -> Tokenizer | None:
    """Rebuild the tokenizer a GGUF file embeds; None when it embeds none."""
    if md.get(WORKBENCH_TOKENIZER_KEY) == "byte":
        return ByteTokenizer()
    model = md.get("tokenizer.ggml.model")
    if model is None or model == "none":
        return None
    tokens = md.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens[:1]):
        raise WeightLoadError("GGUF metadata 'tokenizer.ggml.tokens' must be a list of strings")

    def ids(key: str) -> int | None:
        v = md.get(key)
        return None if v is None else _get_int(md, key)

    try:
        return bpe_from_vocab(
            tokens,
            md.get("tokenizer.ggml.merges"),
            md.get("tokenizer.ggml.token_type"),
            model=str(model),
            pre=md.get("tokenizer.ggml.pre"),
            scores=md.get("tokenizer.ggml.scores"),
            bos_id=ids("tokenizer.ggml.bos_token_id"),
            eos_id=ids("tokenizer.ggml.eos_token_id"),
            unk_id=ids("tokenizer.ggml.unknown_token_id"),
            # llama.cpp's defaults when the key is absent: SentencePiece adds BOS, GPT-2 BPE not.
            add_bos=bool(md.get("tokenizer.ggml.add_bos_token", model == "llama")),
        )
    except (TokenizerError, TypeError) as e:
        raise WeightLoadError(f"cannot rebuild the GGUF tokenizer: {e}") from e
    except Exception as e:  # the tokenizers library raises plain Exception on bad vocabularies
        raise WeightLoadError(f"cannot rebuild the GGUF tokenizer: {e}") from e


def tokenizer_to_metadata(tok: Tokenizer) -> dict[str, tuple[str, Any]]:
    """llama.cpp tokenizer keys for ``tok``, as ``key → (GGUF value type name, value)``.

    Array values are ``("ARRAY:<item type>", list)``.
    """
    eot = "<|endoftext|>"
    if isinstance(tok, ByteTokenizer):
        return {
            WORKBENCH_TOKENIZER_KEY: ("STRING", "byte"),
            "tokenizer.ggml.model": ("STRING", "gpt2"),
            "tokenizer.ggml.pre": ("STRING", "default"),
            "tokenizer.ggml.tokens": ("ARRAY:STRING", [*_byte_alphabet(), eot]),
            "tokenizer.ggml.token_type": ("ARRAY:INT32", [TOKEN_NORMAL] * 256 + [TOKEN_CONTROL]),
            "tokenizer.ggml.merges": ("ARRAY:STRING", []),
            "tokenizer.ggml.bos_token_id": ("UINT32", 256),
            "tokenizer.ggml.eos_token_id": ("UINT32", 256),
            "tokenizer.ggml.add_bos_token": ("BOOL", False),
        }
    if not isinstance(tok, BPETokenizer):
        raise TypeError(f"cannot store a {type(tok).__name__} in GGUF; expected a BPE or byte one")
    data = json.loads(tok.core.to_str())
    bpe = data["model"]
    n = tok.vocab_size
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [TOKEN_NORMAL] * n
    for piece, pid in bpe["vocab"].items():
        tokens[pid] = piece
    for added in data.get("added_tokens") or []:
        tokens[added["id"]] = added["content"]
        types[added["id"]] = TOKEN_CONTROL if added["special"] else TOKEN_USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe.get("merges") or []]
    model, _, pre = tok.name.partition(":")
    if model not in ("gpt2", "llama"):
        model = "llama" if bpe.get("byte_fallback") else "gpt2"
    if not pre or pre == "None":
        pre = "gpt2" if model == "gpt2" else ""
    md: dict[str, tuple[str, Any]] = {
        "tokenizer.ggml.model": ("STRING", model),
        "tokenizer.ggml.tokens": ("ARRAY:STRING", tokens),
        "tokenizer.ggml.token_type": ("ARRAY:INT32", types),
        "tokenizer.ggml.merges": ("ARRAY:STRING", merges),
        "tokenizer.ggml.add_bos_token": ("BOOL", tok.add_bos),
    }
    if pre:
        md["tokenizer.ggml.pre"] = ("STRING", pre)
    if bpe.get("unk_token") is not None and bpe["unk_token"] in bpe["vocab"]:
        md["tokenizer.ggml.unknown_token_id"] = ("UINT32", bpe["vocab"][bpe["unk_token"]])
    if tok.bos_id is not None:
        md["tokenizer.ggml.bos_token_id"] = ("UINT32", tok.bos_id)
    if tok.eos_id is not None:
        md["tokenizer.ggml.eos_token_id"] = ("UINT32", tok.eos_id)
    return md
