"""Hugging Face ``config.json`` ↔ ``ModelConfig``, one small reader per ``model_type``.

The boundary: this module turns the keys of a ``config.json`` into our config and back. It
reads both spellings transformers has used for RoPE: ``rope_parameters`` (transformers 5; for
Gemma 3 one per layer type) and ``rope_theta`` with ``rope_scaling``. Anything that would change
the math and that we do not reproduce (other activations, partial rotary, YaRN, Qwen2's
per-layer windows...) is refused by name rather than ignored. Renaming tensors is
:mod:`workbench.formats.hf_names`' job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from workbench.formats._common import WeightLoadError, WeightSaveError
from workbench.models.config import ModelConfig, ModelConfigError

__all__ = ["UnsupportedModelError", "config_from_hf", "config_to_hf"]

_SLIDING, _FULL = "sliding_attention", "full_attention"


class UnsupportedModelError(WeightLoadError):
    """The file describes a model whose math ours would not reproduce."""


def _refuse(what: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"config.json: {what}; loading it would compute something else")


def _rope_params(hf: Mapping[str, Any], layer_type: str | None = None) -> dict[str, Any]:
    """The RoPE parameters of ``hf`` (of one layer type's when they are per type)."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and layer_type is not None and layer_type in params:
        params = params[layer_type]
    out = dict(params) if isinstance(params, dict) else {}
    legacy = hf.get("rope_scaling")
    if isinstance(legacy, dict) and legacy:  # older files; transformers lets it win too
        out.pop("rope_type", None)
        out.update(legacy)
    if "rope_theta" in hf:
        out.setdefault("rope_theta", hf["rope_theta"])
    return out


def _rope_fields(params: Mapping[str, Any], default_theta: float) -> dict[str, Any]:
    kind = params.get("rope_type", params.get("type", "default"))
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise _refuse(f"partial_rotary_factor {params['partial_rotary_factor']} is not 1")
    fields: dict[str, Any] = {"rope_theta": float(params.get("rope_theta", default_theta))}
    if kind == "default":
        return fields
    if kind == "linear":
        return {**fields, "rope_scaling": "linear", "rope_factor": float(params["factor"])}
    if kind == "llama3":
        return {
            **fields,
            "rope_scaling": "llama3",
            "rope_factor": float(params["factor"]),
            "rope_low_freq_factor": float(params["low_freq_factor"]),
            "rope_high_freq_factor": float(params["high_freq_factor"]),
            "rope_original_ctx": int(params["original_max_position_embeddings"]),
        }
    raise _refuse(f"rope_type {str(kind)[:40]!r} is not supported (default, linear, llama3)")


def _rope_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling == "linear":
        out.update(rope_type="linear", factor=cfg.rope_factor)
    elif cfg.rope_scaling == "llama3":
        out.update(
            rope_type="llama3",
            factor=cfg.rope_factor,
            low_freq_factor=cfg.rope_low_freq_factor,
            high_freq_factor=cfg.rope_high_freq_factor,
            original_max_position_embeddings=cfg.rope_original_ctx,
        )
    return out


def _global_every(hf: Mapping[str, Any], n_layer: int, default: int) -> int:
    """Our ``global_every`` for ``hf``'s ``layer_types`` (or the family's pattern without them)."""
    types = hf.get("layer_types")
    if types is None:
        return int(hf.get("sliding_window_pattern", default))
    if not isinstance(types, list) or len(types) != n_layer or set(types) - {_SLIDING, _FULL}:
        raise WeightLoadError(
            f"config.json: layer_types must list {_SLIDING!r} or {_FULL!r} for each of the "
            f"{n_layer} layers"
        )
    full = [i for i, t in enumerate(types) if t == _FULL]
    every = full[0] + 1 if full else 0
    if [every and (i + 1) % every == 0 for i in range(n_layer)] != [t == _FULL for t in types]:
        raise _refuse(f"layer_types {types} is not one global layer every n")
    return every


def _layer_types(cfg: ModelConfig) -> list[str]:
    return [_SLIDING if cfg.slides(i) else _FULL for i in range(cfg.n_layer)]


def _common(hf: Mapping[str, Any], tie_default: bool) -> dict[str, Any]:
    """The fields every rotary family spells alike."""
    heads, width = hf["num_attention_heads"], hf["hidden_size"]
    head_dim = hf.get("head_dim")
    return {
        "vocab_size": hf["vocab_size"],
        "n_ctx": hf.get("max_position_embeddings", 2048),
        "n_embd": width,
        "n_layer": hf["num_hidden_layers"],
        "n_head": heads,
        "n_kv_head": hf.get("num_key_value_heads"),
        "intermediate_size": hf["intermediate_size"],
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", tie_default)),
        "head_size": None if head_dim in (None, width // heads) else head_dim,
    }


def _act(hf: Mapping[str, Any], key: str, want: tuple[str, ...]) -> None:
    if hf.get(key, want[0]) not in want:
        raise _refuse(f"{key} {str(hf[key])[:40]!r} is not {want[0]}")


def _refuse_set(hf: Mapping[str, Any], *flags: str, note: str = "") -> None:
    """Refuse the config when one of ``flags`` (switches we do not implement) is set."""
    for flag in flags:
        if hf.get(flag):
            raise _refuse(f"{flag} is set{note}")


def _gpt2(hf: Mapping[str, Any]) -> dict[str, Any]:
    _act(hf, "activation_function", ("gelu_new", "gelu_pytorch_tanh"))
    _refuse_set(
        hf, "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"
    )
    if hf.get("scale_attn_weights", True) is not True:
        raise _refuse("scale_attn_weights is off")
    return {
        "family": "gpt2",
        "vocab_size": hf["vocab_size"],
        "n_ctx": hf.get("n_positions", 1024),
        "n_embd": hf["n_embd"],
        "n_layer": hf["n_layer"],
        "n_head": hf["n_head"],
        "intermediate_size": hf.get("n_inner"),
        "norm_eps": float(hf.get("layer_norm_epsilon", 1e-5)),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", True)),
    }


def _llama_like(family: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    def read(hf: Mapping[str, Any]) -> dict[str, Any]:
        _act(hf, "hidden_act", ("silu",))
        _refuse_set(hf, "mlp_bias")
        _refuse_set(hf, "use_sliding_window", note=" (per-layer windows are not supported)")
        fields = {"family": family, **_common(hf, tie_default=False)}
        fields.update(_rope_fields(_rope_params(hf), 10000.0))
        if family in ("llama", "phi3"):
            window = hf.get("sliding_window")
            fields["sliding_window"] = window or None  # Phi-4 writes 0 for none
        if family == "qwen2":
            fields["qkv_bias"] = None if hf.get("attention_bias", True) else False
        elif hf.get("attention_bias"):
            fields["bias"] = True
        return fields

    return read


def _gemma(family: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    def read(hf: Mapping[str, Any]) -> dict[str, Any]:
        _act(hf, "hidden_activation", ("gelu_pytorch_tanh",))
        _refuse_set(hf, "attention_bias", "use_bidirectional_attention")
        fields = {"family": family, **_common(hf, tie_default=True)}
        n_layer = fields["n_layer"]
        fields["global_every"] = _global_every(hf, n_layer, 2 if family == "gemma2" else 6)
        fields["sliding_window"] = hf.get("sliding_window")
        fields["query_pre_attn_scalar"] = float(hf.get("query_pre_attn_scalar", 256))
        fields["attn_softcap"] = hf.get("attn_logit_softcapping")
        fields["final_softcap"] = hf.get("final_logit_softcapping")
        fields.update(
            _rope_fields(_rope_params(hf, _FULL), 1_000_000.0 if family == "gemma3" else 10000.0)
        )
        if family == "gemma3":
            local = (
                _rope_params(hf, _SLIDING) if isinstance(hf.get("rope_parameters"), dict) else {}
            )
            if "rope_theta" not in local and "rope_local_base_freq" in hf:
                local = {"rope_theta": hf["rope_local_base_freq"]}
            local_fields = _rope_fields(local, 10000.0)
            if set(local_fields) != {"rope_theta"}:
                raise _refuse("sliding layers' RoPE is scaled")
            fields["rope_local_theta"] = local_fields["rope_theta"]
        return fields

    return read


_READERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "gpt2": _gpt2,
    "llama": _llama_like("llama"),
    "mistral": _llama_like("llama"),
    "qwen2": _llama_like("qwen2"),
    "qwen3": _llama_like("qwen3"),
    "phi3": _llama_like("phi3"),
    "gemma2": _gemma("gemma2"),
    "gemma3_text": _gemma("gemma3"),
}


def config_from_hf(hf: Mapping[str, Any]) -> ModelConfig:
    """A ``ModelConfig`` from a Hugging Face ``config.json``.

    Fields that would change the math (other activations, MLP biases, unsupported rope
    scaling...) are refused by name rather than ignored.

    Examples
    --------
    >>> config_from_hf({"model_type": "gpt2", "vocab_size": 257, "n_positions": 64,
    ...                 "n_embd": 32, "n_layer": 2, "n_head": 4}).n_ctx
    64
    >>> config_from_hf({"model_type": "qwen2", "vocab_size": 99, "hidden_size": 32,
    ...                 "intermediate_size": 64, "num_hidden_layers": 1,
    ...                 "num_attention_heads": 4}).has_qkv_bias
    True
    """
    kind = hf.get("model_type")
    reader = _READERS.get(kind) if isinstance(kind, str) else None
    if kind == "gemma3":
        raise UnsupportedModelError(
            "config.json: model_type 'gemma3' is Gemma 3 with its vision tower "
            "(Gemma3ForConditionalGeneration); only the text-only gemma3_text "
            "(Gemma3ForCausalLM) is supported"
        )
    if reader is None:
        raise UnsupportedModelError(
            f"config.json: model_type {str(kind)[:40]!r} is not supported ({', '.join(_READERS)})"
        )
    try:
        return ModelConfig(**reader(hf))
    except KeyError as e:
        raise WeightLoadError(f"config.json lacks {e.args[0]!r}; add it") from None
    except (TypeError, ValueError, AttributeError, ModelConfigError) as e:
        if isinstance(e, WeightLoadError):
            raise
        raise WeightLoadError(f"config.json describes an invalid model: {e}") from None


_ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "phi3": ("Phi3ForCausalLM", "phi3"),
    "gemma2": ("Gemma2ForCausalLM", "gemma2"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
}


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The Hugging Face ``config.json`` for ``cfg`` (inverse of :func:`config_from_hf`).

    A ``llama`` with a sliding window is written as Mistral, the model that has one.
    """
    if cfg.family == "gpt2":
        if not cfg.use_bias:
            raise WeightSaveError("a gpt2 model without biases has no Hugging Face layout")
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": cfg.vocab_size,
            "n_positions": cfg.n_ctx,
            "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_inner": cfg.intermediate_size,
            "layer_norm_epsilon": cfg.norm_eps,
            "activation_function": "gelu_new",
            "tie_word_embeddings": cfg.tie_embeddings,
        }
    arch, kind = _ARCHITECTURES[cfg.family]
    if cfg.family == "llama" and cfg.sliding_window is not None:
        arch, kind = "MistralForCausalLM", "mistral"
    _check_savable(cfg, kind)
    out: dict[str, Any] = {
        "architectures": [arch],
        "model_type": kind,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_width,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.n_ctx,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": _rope_to_hf(cfg),
        "tie_word_embeddings": cfg.tie_embeddings,
        "pad_token_id": None,  # else Phi-3's default (32000) may lie outside the vocabulary
    }
    if cfg.is_gemma:
        out.update(
            hidden_activation="gelu_pytorch_tanh",
            attention_bias=False,
            query_pre_attn_scalar=_int_if_whole(cfg.query_pre_attn_scalar or cfg.head_dim),
            sliding_window=cfg.sliding_window,
            layer_types=_layer_types(cfg),
            attn_logit_softcapping=cfg.attn_softcap,
            final_logit_softcapping=cfg.final_softcap,
        )
        if cfg.family == "gemma3":
            local = {"rope_type": "default", "rope_theta": cfg.rope_local_theta or cfg.rope_theta}
            out["rope_parameters"] = {_FULL: out["rope_parameters"], _SLIDING: local}
            out["rope_local_base_freq"] = local["rope_theta"]
        return out
    out.update(hidden_act="silu", mlp_bias=False)
    if cfg.family in ("llama", "phi3"):
        out["sliding_window"] = cfg.sliding_window
    if cfg.family != "phi3":
        out["attention_bias"] = cfg.has_qkv_bias if cfg.family == "qwen2" else cfg.use_bias
    if cfg.family in ("qwen2", "qwen3"):
        out.update(use_sliding_window=False, layer_types=[_FULL] * cfg.n_layer)
    return out


def _int_if_whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x  # transformers types this key int


def _check_savable(cfg: ModelConfig, kind: str) -> None:
    """Refuse switches the Hugging Face class of ``kind`` has no key for."""
    problems = []
    if cfg.has_qk_norm != (cfg.family in ("qwen3", "gemma3")):
        problems.append("qk_norm")
    if cfg.family == "qwen2":
        if cfg.use_bias:
            problems.append("bias (Qwen2 has q/k/v biases only)")
    elif cfg.qkv_bias and not cfg.use_bias:
        problems.append("qkv_bias")
    if not cfg.is_gemma:
        if cfg.sliding_window is not None and cfg.family not in ("llama", "phi3"):
            problems.append("sliding_window")
        if cfg.global_every != 0 and cfg.sliding_window is not None:
            problems.append("global_every")
        for name in ("query_pre_attn_scalar", "attn_softcap", "final_softcap", "rope_local_theta"):
            if getattr(cfg, name) is not None:
                problems.append(name)
    if cfg.family == "phi3" and cfg.use_bias:
        problems.append("bias")
    if problems:
        raise WeightSaveError(
            f"a {cfg.family} model with {', '.join(problems)} has no Hugging Face {kind} layout; "
            "save it in our own layout (hf_names=False) or as GGUF"
        )
