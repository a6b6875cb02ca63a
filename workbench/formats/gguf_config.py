"""llama.cpp's model hyperparameters in GGUF metadata ↔ ``ModelConfig``, per architecture.

The boundary: this module reads the ``{arch}.*`` keys (and the few tensor shapes and values
that carry configuration: the vocabulary size, a tied head, biases, Llama 3's
``rope_freqs.weight``) into a ``ModelConfig``, and writes the keys back. Our ``general.
architecture`` is our family's name, as llama.cpp's (a Mistral is ``llama`` with
``attention.sliding_window``). Key names follow gguf-py's ``gguf.constants.Keys``; what llama.cpp
fixes per architecture rather than storing (Gemma's window patterns, Gemma 3's local RoPE base,
the query scale of the 27B Gemmas) is filled in the same way, from ``src/llama-model.cpp``.
Files we write also carry ``workbench.config``, our exact config, which then wins.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from workbench.formats._common import WeightLoadError
from workbench.models.config import FAMILIES, ModelConfig, ModelConfigError
from workbench.models.rope import llama3_divisors, llama3_from_divisors

__all__ = [
    "ROPE_FREQS",
    "WORKBENCH_CONFIG_KEY",
    "config_from_metadata",
    "config_to_metadata",
    "derived_tensors",
]

# The exact ModelConfig as JSON: GGUF's standard keys store eps and rope base as float32, which
# would round 1e-5 and change logits in the last bits; this key keeps them exact.
WORKBENCH_CONFIG_KEY = "workbench.config"
# Llama 3's RoPE divisors, one per frequency (``convert_hf_to_gguf.py`` writes them).
ROPE_FREQS = "rope_freqs.weight"
# Keys llama.cpp reads as strings (its loader refuses another type).
_STRING_KEYS = ("general.architecture", "general.name", "tokenizer.ggml.model")
# What llama.cpp fixes for Gemma instead of storing it: the window pattern (one global layer
# every n), the layer count of the 27B models (whose queries scale by n_embd / n_head rather
# than the head width) and Gemma 3's RoPE base for sliding layers.
_GEMMA_PATTERN = {"gemma2": 2, "gemma3": 6}
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
_GEMMA3_LOCAL_THETA = 10000.0
# llama.cpp's defaults for Gemma 2's soft-caps when a file lacks them.
_GEMMA2_SOFTCAPS = (50.0, 30.0)

TensorReader = Callable[[str], Tensor]


def _get_int(md: Mapping[str, Any], key: str, default: int | None = None) -> int:
    v = md.get(key, default)
    if v is None:
        raise WeightLoadError(f"GGUF metadata lacks {key!r}, needed to build the model")
    if isinstance(v, bool) or not isinstance(v, int):
        raise WeightLoadError(f"GGUF metadata {key!r} must be an integer, got {v!r}")
    return v


def _get_float(md: Mapping[str, Any], key: str, default: float | None) -> float | None:
    v = md.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise WeightLoadError(f"GGUF metadata {key!r} must be a number, got {v!r}")
    return float(v)


def _float(md: Mapping[str, Any], key: str, default: float) -> float:
    v = _get_float(md, key, default)
    assert v is not None
    return v


def _positive(md: Mapping[str, Any], key: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise WeightLoadError(f"GGUF metadata {key!r} must be positive, got {value}; fix the key")


def _rope_scaling(
    md: Mapping[str, Any],
    arch: str,
    shapes: Mapping[str, tuple[int, ...]],
    read: TensorReader,
    theta: float,
    head_dim: int,
) -> dict[str, Any]:
    """RoPE scaling: ``linear`` from the keys, ``llama3`` from ``rope_freqs.weight``."""
    kind = md.get(f"{arch}.rope.scaling.type")
    if kind is not None and not isinstance(kind, str):
        raise WeightLoadError(f"GGUF metadata '{arch}.rope.scaling.type' must be a string")
    factor_key = f"{arch}.rope.scaling.factor"
    factor = _get_float(md, factor_key, None)
    if factor is None:
        factor_key = f"{arch}.rope.scale_linear"
        factor = _get_float(md, factor_key, None)
    out: dict[str, Any] = {}
    if kind not in (None, "none", "linear"):
        raise WeightLoadError(
            f"GGUF metadata '{arch}.rope.scaling.type' is {kind!r}: this rope scaling is not "
            "supported (none, linear; llama3 comes as rope_freqs.weight), so this model would "
            "compute something else"
        )
    if kind != "none" and factor not in (None, 0.0, 1.0):  # llama.cpp reads 0 as "no scaling"
        _positive(md, factor_key, factor)
        out = {"rope_scaling": "linear", "rope_factor": factor}
    if ROPE_FREQS in shapes:
        if out:
            raise WeightLoadError(
                f"GGUF file has both {ROPE_FREQS!r} and linear rope scaling; remove one"
            )
        if tuple(shapes[ROPE_FREQS]) != (head_dim // 2,):
            raise WeightLoadError(
                f"GGUF tensor {ROPE_FREQS!r} has shape {tuple(shapes[ROPE_FREQS])}; a head "
                f"width of {head_dim} needs ({head_dim // 2},); re-convert the model"
            )
        divisors = read(ROPE_FREQS).float().reshape(-1)
        found = llama3_from_divisors(divisors, theta, head_dim)
        if found is None:
            raise WeightLoadError(
                f"GGUF tensor {ROPE_FREQS!r} holds RoPE divisors that no llama3 scaling "
                f"reproduces (expected {head_dim // 2} values from 1 up to the factor, as "
                "convert_hf_to_gguf.py writes them); re-convert the model"
            )
        out = {"rope_scaling": "llama3", **found}
    return out


def _rotary(
    md: Mapping[str, Any], arch: str, shapes: Mapping[str, tuple[int, ...]], read: TensorReader
) -> dict[str, Any]:
    """The fields every rotary architecture stores alike."""
    n_embd = _get_int(md, f"{arch}.embedding_length")
    n_head = _get_int(md, f"{arch}.attention.head_count")
    kv = _get_int(md, f"{arch}.attention.head_count_kv", n_head)
    head = md.get(f"{arch}.attention.key_length")
    if head is None:
        q = shapes.get("blk.0.attn_q.weight")
        if q is not None and n_head > 0 and q[0] != n_embd // n_head * n_head:
            raise WeightLoadError(
                f"GGUF metadata lacks '{arch}.attention.key_length' (the head width) and the "
                f"q projection's {q[0]} rows are not n_embd ({n_embd}); add the key "
                f"({q[0] // n_head} for {n_head} heads)"
            )
        head = n_embd // n_head if n_head > 0 else 0
    head = _get_int(md, f"{arch}.attention.key_length", head)
    if head <= 0 or head % 2:
        raise WeightLoadError(
            f"GGUF metadata '{arch}.attention.key_length' must be a positive even head width, "
            f"got {head}; fix the key"
        )
    value = _get_int(md, f"{arch}.attention.value_length", head)
    rot = _get_int(md, f"{arch}.rope.dimension_count", head)
    if value != head or rot != head:
        raise WeightLoadError(
            f"GGUF metadata gives heads of {head} (key_length), {value} (value_length) and "
            f"{rot} rotated dims (rope.dimension_count); only equal widths (full rotary) are "
            "supported"
        )
    theta = _float(md, f"{arch}.rope.freq_base", 10000.0)
    _positive(md, f"{arch}.rope.freq_base", theta)
    window = _get_int(md, f"{arch}.attention.sliding_window", 0) or None
    if window is not None and window < 0:
        raise WeightLoadError(
            f"GGUF metadata '{arch}.attention.sliding_window' is {window}; it must be a positive "
            "token count (0: no window)"
        )
    return {
        "n_kv_head": None if kv == n_head else kv,
        "norm_eps": _float(md, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": theta,
        "head_size": None if n_head and head == n_embd // n_head else head,
        "sliding_window": window,
        **_rope_scaling(md, arch, shapes, read, theta, head),
    }


def _gemma(md: Mapping[str, Any], arch: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    n_layer, n_embd, n_head = fields["n_layer"], fields["n_embd"], fields["n_head"]
    head = fields["head_size"] or n_embd // n_head
    scalar = n_embd // n_head if n_layer == _GEMMA_27B_LAYERS[arch] else head
    out: dict[str, Any] = {
        "global_every": _get_int(
            md, f"{arch}.attention.sliding_window_pattern", _GEMMA_PATTERN[arch]
        ),
        "query_pre_attn_scalar": float(scalar),
    }
    attn_cap, final_cap = _GEMMA2_SOFTCAPS if arch == "gemma2" else (None, None)
    out["attn_softcap"] = _get_float(md, f"{arch}.attn_logit_softcapping", attn_cap)
    out["final_softcap"] = _get_float(md, f"{arch}.final_logit_softcapping", final_cap)
    if arch == "gemma2" and fields["sliding_window"] is None:
        out["sliding_window"] = 4096  # llama.cpp's default
    if arch == "gemma3":
        out["rope_local_theta"] = _float(md, f"{arch}.rope.freq_base_swa", _GEMMA3_LOCAL_THETA)
    for field, key in (
        ("attn_softcap", "attn_logit_softcapping"),
        ("final_softcap", "final_logit_softcapping"),
        ("rope_local_theta", "rope.freq_base_swa"),
    ):
        _positive(md, f"{arch}.{key}", out.get(field))
    return out


def _biases(arch: str, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """Bias switches from the tensors present; None is the family's default."""
    q_bias = "blk.0.attn_q.bias" in shapes or "blk.0.attn_qkv.bias" in shapes
    out_bias = "blk.0.attn_output.bias" in shapes
    if arch == "qwen2":
        return {"qkv_bias": None if q_bias else False, "bias": True if out_bias else None}
    if out_bias:
        return {"bias": True}
    return {"qkv_bias": True} if q_bias else {}


def config_from_metadata(
    md: Mapping[str, Any],
    shapes: Mapping[str, tuple[int, ...]],
    read: TensorReader | None = None,
) -> ModelConfig:
    """Build a ``ModelConfig`` from GGUF metadata and the tensor shapes (by GGUF name).

    ``read(name)`` gives a tensor's values; it is asked only for ``rope_freqs.weight``.
    """
    for key in _STRING_KEYS:  # llama.cpp refuses a file where these are not strings
        if key in md and not isinstance(md[key], str):
            raise WeightLoadError(
                f"GGUF metadata {key!r} must be a string, got {type(md[key]).__name__}; fix or "
                "remove the key"
            )
    arch = md.get("general.architecture")
    if arch not in FAMILIES:
        raise WeightLoadError(
            f"unsupported GGUF architecture {arch!r}; this loader reads {', '.join(FAMILIES)}"
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
    for longrope in ("rope_factors_long.weight", "rope_factors_short.weight"):
        if longrope in shapes:
            raise WeightLoadError(
                f"GGUF tensor {longrope!r}: LongRoPE (Phi-3 128k) is not supported, so this "
                "model would compute something else; use a 4k-context variant"
            )
    fields: dict[str, Any] = {
        "family": arch,
        "vocab_size": emb[0],
        "n_ctx": _get_int(md, f"{arch}.context_length"),
        "n_embd": _get_int(md, f"{arch}.embedding_length"),
        "n_layer": _get_int(md, f"{arch}.block_count"),
        "n_head": _get_int(md, f"{arch}.attention.head_count"),
        "intermediate_size": _get_int(md, f"{arch}.feed_forward_length"),
        "tie_embeddings": "output.weight" not in shapes,
    }
    if arch == "gpt2":
        fields["norm_eps"] = _float(md, f"{arch}.attention.layer_norm_epsilon", 1e-5)
        fields["bias"] = None if "blk.0.attn_qkv.bias" in shapes else False
    else:
        fields.update(_rotary(md, arch, shapes, read or _no_reader))
        fields.update(_biases(arch, shapes))
        if arch in _GEMMA_PATTERN:
            fields.update(_gemma(md, arch, fields))
    try:
        return ModelConfig(**fields)
    except ModelConfigError as e:
        raise WeightLoadError(f"GGUF metadata gives an invalid model config: {e}") from e


def _no_reader(name: str) -> Tensor:
    raise WeightLoadError(f"GGUF tensor {name!r} is needed to build the config")


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
    if a == "gpt2":
        md[f"{a}.attention.layer_norm_epsilon"] = ("FLOAT32", cfg.norm_eps)
        return md
    md[f"{a}.attention.head_count_kv"] = ("UINT32", cfg.kv_heads)
    md[f"{a}.attention.layer_norm_rms_epsilon"] = ("FLOAT32", cfg.norm_eps)
    md[f"{a}.attention.key_length"] = ("UINT32", cfg.head_dim)
    md[f"{a}.attention.value_length"] = ("UINT32", cfg.head_dim)
    md[f"{a}.rope.freq_base"] = ("FLOAT32", cfg.rope_theta)
    md[f"{a}.rope.dimension_count"] = ("UINT32", cfg.head_dim)
    if cfg.rope_scaling == "linear":
        md[f"{a}.rope.scaling.type"] = ("STRING", "linear")
        md[f"{a}.rope.scaling.factor"] = ("FLOAT32", cfg.rope_factor)
    if cfg.sliding_window is not None or a == "phi3":  # Phi-3 writes 0 for "no window"
        md[f"{a}.attention.sliding_window"] = ("UINT32", cfg.sliding_window or 0)
    if cfg.is_gemma and cfg.global_every != _GEMMA_PATTERN[a]:
        md[f"{a}.attention.sliding_window_pattern"] = ("UINT32", cfg.global_every)
    if cfg.attn_softcap is not None:
        md[f"{a}.attn_logit_softcapping"] = ("FLOAT32", cfg.attn_softcap)
    if cfg.final_softcap is not None:
        md[f"{a}.final_logit_softcapping"] = ("FLOAT32", cfg.final_softcap)
    if cfg.rope_local_theta is not None:
        md[f"{a}.rope.freq_base_swa"] = ("FLOAT32", cfg.rope_local_theta)
    return md


def derived_tensors(cfg: ModelConfig) -> dict[str, Tensor]:
    """Tensors llama.cpp needs that are configuration, not parameters (Llama 3's divisors)."""
    return {ROPE_FREQS: llama3_divisors(cfg)} if cfg.rope_scaling == "llama3" else {}
