"""llama.cpp's tokenizer keys in GGUF metadata, and which of a file's keys a save carries over.

The boundary: this module turns ``tokenizer.ggml.*`` metadata into one of our tokenizers and
back (with the chat template and special token ids), names the pre-tokenizer llama.cpp should
use, and says which other keys of a loaded file (``general.name``, ...) a save writes again
(:func:`carried_metadata`). Key names and value types follow llama.cpp (``src/llama-vocab.cpp``)
and gguf-py's ``gguf.constants.Keys``. Model hyperparameters are :mod:`gguf_config`'s.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any

from workbench.formats._common import WeightLoadError
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

# Our ByteTokenizer has no GGUF model of its own; we store it as a byte-level "gpt2" vocabulary
# with no merges (which llama.cpp can run, giving the same ids) and mark it with this key so our
# reader rebuilds the exact ByteTokenizer.
WORKBENCH_TOKENIZER_KEY = "workbench.tokenizer"

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
# Special token ids llama.cpp reads (as UINT32), by the tokenizer attribute that holds them.
# ``bos``/``eos`` are the tokenizer's own properties; ``unk_id`` and ``pad_id`` are set on the
# tokenizer object a GGUF load builds, so a save of that tokenizer writes them back.
SPECIAL_ID_KEYS: dict[str, str] = {
    "bos_id": "tokenizer.ggml.bos_token_id",
    "eos_id": "tokenizer.ggml.eos_token_id",
    "unk_id": "tokenizer.ggml.unknown_token_id",
    "pad_id": "tokenizer.ggml.padding_token_id",
}
# Other llama.cpp tokenizer keys that describe the vocabulary rather than the model: a save that
# writes the same vocabulary carries them over from the file's metadata, with these types. The
# unknown and padding ids come from the tokenizer when it has them, else from here.
_CARRIED_TOKENIZER_KEYS: dict[str, str] = {
    "tokenizer.ggml.unknown_token_id": "UINT32",
    "tokenizer.ggml.padding_token_id": "UINT32",
    "tokenizer.ggml.eot_token_id": "UINT32",
    "tokenizer.ggml.eom_token_id": "UINT32",
    "tokenizer.ggml.seperator_token_id": "UINT32",  # sic, llama.cpp's spelling
    "tokenizer.ggml.mask_token_id": "UINT32",
    "tokenizer.ggml.fim_pre_token_id": "UINT32",
    "tokenizer.ggml.fim_suf_token_id": "UINT32",
    "tokenizer.ggml.fim_mid_token_id": "UINT32",
    "tokenizer.ggml.fim_pad_token_id": "UINT32",
    "tokenizer.ggml.fim_rep_token_id": "UINT32",
    "tokenizer.ggml.fim_sep_token_id": "UINT32",
    "tokenizer.ggml.add_eos_token": "BOOL",
    "tokenizer.ggml.add_sep_token": "BOOL",
    "tokenizer.ggml.add_space_prefix": "BOOL",
    "tokenizer.ggml.remove_extra_whitespaces": "BOOL",
}
# Keys a GGUF writer derives from what it writes; a save never copies them from metadata.
DERIVED_GENERAL_KEYS = frozenset(
    {
        "general.architecture",
        "general.alignment",
        "general.file_type",
        "general.quantization_version",
    }
)
# Namespaces that describe the source file's encoding, stale once its tensors are re-encoded.
_STALE_NAMESPACES = ("quantize.", "split.")

# ---------------------------------------------------------------------------- tokenizer

# The ``tokenizer.ggml.pre`` names llama.cpp accepts for a BPE vocabulary are listed in
# ``llama_vocab::impl::load`` (src/llama-vocab.cpp); an unknown name makes llama.cpp refuse the
# file. Names we read that llama.cpp spells differently (older exports of ours wrote "gpt2"):
_PRE_SPELLING = {"gpt2": "gpt-2", "minerva": "minerva-7b"}
# The pre-tokenizer structures ``bpe_from_vocab`` builds, by their first component, for a
# tokenizer whose name does not say which one it is (GPT-2's own, one read from tokenizer.json).
_LLAMA3_SPLIT = r"\p{N}{1,3}"


def _byte_alphabet() -> list[str]:
    """GPT-2's printable spelling of each byte value, indexed by the byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def _special_id(md: Mapping[str, Any], key: str, n_tokens: int) -> int | None:
    v = md.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise WeightLoadError(
            f"GGUF metadata {key!r} must be a token id (UINT32), got {v!r}; fix or remove the key"
        )
    if not 0 <= v < n_tokens:
        raise WeightLoadError(
            f"GGUF metadata {key!r} is {v}, outside the vocabulary of {n_tokens} tokens; fix or "
            "remove the key"
        )
    return v


def chat_template_from_metadata(md: Mapping[str, Any]) -> str | None:
    """The file's ``tokenizer.chat_template`` (a Jinja string), None when it has none."""
    template = md.get(CHAT_TEMPLATE_KEY)
    if template is not None and not isinstance(template, str):
        raise WeightLoadError(
            f"GGUF metadata {CHAT_TEMPLATE_KEY!r} must be a string, got "
            f"{type(template).__name__}; fix or remove the key"
        )
    return template


def tokenizer_from_metadata(md: Mapping[str, Any]) -> Tokenizer | None:
    """Rebuild the tokenizer a GGUF file embeds; None when it embeds none.

    The tokenizer carries the file's chat template (``chat_template``) and, as attributes
    ``unk_id`` and ``pad_id``, its unknown and padding token ids (None when absent), so that
    saving it writes them back. Ids outside the vocabulary and a template that is not a string
    raise ``WeightLoadError``.
    """
    template = chat_template_from_metadata(md)
    tok: Tokenizer
    if md.get(WORKBENCH_TOKENIZER_KEY) == "byte":
        tok = ByteTokenizer()
        tok.chat_template = template
        return tok
    model = md.get("tokenizer.ggml.model")
    if model is None or model == "none":
        return None
    tokens = md.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens[:1]):
        raise WeightLoadError("GGUF metadata 'tokenizer.ggml.tokens' must be a list of strings")
    ids = {attr: _special_id(md, key, len(tokens)) for attr, key in SPECIAL_ID_KEYS.items()}
    pre = md.get("tokenizer.ggml.pre")
    if pre is not None and not isinstance(pre, str):
        raise WeightLoadError(f"GGUF metadata 'tokenizer.ggml.pre' must be a string, got {pre!r}")
    try:
        tok = bpe_from_vocab(
            tokens,
            md.get("tokenizer.ggml.merges"),
            md.get("tokenizer.ggml.token_type"),
            model=str(model),
            pre=pre,
            scores=md.get("tokenizer.ggml.scores"),
            bos_id=ids["bos_id"],
            eos_id=ids["eos_id"],
            unk_id=ids["unk_id"],
            # llama.cpp's defaults when the key is absent: SentencePiece adds BOS, GPT-2 BPE not.
            add_bos=bool(md.get("tokenizer.ggml.add_bos_token", model == "llama")),
        )
    except (TokenizerError, TypeError) as e:
        raise WeightLoadError(f"cannot rebuild the GGUF tokenizer: {e}") from e
    except Exception as e:  # the tokenizers library raises plain Exception on bad vocabularies
        raise WeightLoadError(f"cannot rebuild the GGUF tokenizer: {e}") from e
    tok.chat_template = template
    # Plain attributes until the tokenizer classes declare them; a save reads them back.
    tok.unk_id = ids["unk_id"]  # type: ignore[attr-defined,unused-ignore]
    tok.pad_id = ids["pad_id"]  # type: ignore[attr-defined,unused-ignore]
    return tok


def llama_cpp_pre(tok: BPETokenizer, data: Mapping[str, Any]) -> str:
    """The ``tokenizer.ggml.pre`` name llama.cpp knows for ``tok``'s pre-tokenizer.

    ``data`` is the tokenizer's JSON. A tokenizer rebuilt from a GGUF file keeps its file's name
    (spelled as llama.cpp spells it); otherwise the name is read off the pre-tokenizer's
    structure. One that matches none of ours gets "default" with a warning: llama.cpp will load
    the file, but may split text differently.
    """
    model, _, pre = tok.name.partition(":")
    if pre and pre != "None" and model in ("gpt2", "llama"):
        return _PRE_SPELLING.get(pre, pre)
    spec = data.get("pre_tokenizer") or {}
    parts = spec.get("pretokenizers", []) if spec.get("type") == "Sequence" else [spec]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        pattern = str((parts[0].get("pattern") or {}).get("Regex", ""))
        return "llama-bpe" if _LLAMA3_SPLIT in pattern else "qwen2"
    warnings.warn(
        f"the pre-tokenizer of {tok.name!r} matches none llama.cpp names; writing 'default', "
        "with which llama.cpp may split text differently",
        stacklevel=3,
    )
    return "default"


def tokenizer_to_metadata(tok: Tokenizer) -> dict[str, tuple[str, Any]]:
    """llama.cpp tokenizer keys for ``tok``, as ``key → (GGUF value type name, value)``.

    Array values are ``("ARRAY:<item type>", list)``. The chat template and the unknown and
    padding ids are written when the tokenizer has them.
    """
    eot = "<|endoftext|>"
    md: dict[str, tuple[str, Any]]
    template = getattr(tok, "chat_template", None)
    if isinstance(tok, ByteTokenizer):
        md = {
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
        if template is not None:
            md[CHAT_TEMPLATE_KEY] = ("STRING", template)
        return md
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
    model = tok.name.partition(":")[0]
    if model not in ("gpt2", "llama"):
        model = "llama" if bpe.get("byte_fallback") else "gpt2"
    md = {
        "tokenizer.ggml.model": ("STRING", model),
        "tokenizer.ggml.tokens": ("ARRAY:STRING", tokens),
        "tokenizer.ggml.token_type": ("ARRAY:INT32", types),
        "tokenizer.ggml.merges": ("ARRAY:STRING", merges),
        "tokenizer.ggml.add_bos_token": ("BOOL", tok.add_bos),
    }
    if model == "gpt2":  # llama.cpp reads a pre-tokenizer name for BPE vocabularies only
        md["tokenizer.ggml.pre"] = ("STRING", llama_cpp_pre(tok, data))
    ids: dict[str, int | None] = {attr: getattr(tok, attr, None) for attr in SPECIAL_ID_KEYS}
    if ids["unk_id"] is None and bpe.get("unk_token") in bpe["vocab"]:
        ids["unk_id"] = bpe["vocab"][bpe["unk_token"]]
    for attr, key in SPECIAL_ID_KEYS.items():
        value = ids[attr]
        if value is not None and 0 <= value < n:
            md[key] = ("UINT32", value)
    if template is not None:
        md[CHAT_TEMPLATE_KEY] = ("STRING", template)
    return md


def _gguf_type(key: str, value: Any) -> str | None:
    """The GGUF type a carried key is written with (llama.cpp's, for the keys it reads)."""
    if key in _CARRIED_TOKENIZER_KEYS:
        return _CARRIED_TOKENIZER_KEYS[key]
    if key.startswith("general.") and isinstance(value, int) and not isinstance(value, bool):
        return "UINT32" if 0 <= value < 2**32 else None  # counts, as gguf-py writes them
    return None


def carried_metadata(
    md: Mapping[str, Any], arch: str, tokenizer: Tokenizer | None
) -> dict[str, tuple[str | None, Any]]:
    """The keys of ``md`` that a save of an ``arch`` model with ``tokenizer`` carries over.

    ``md`` may be a loaded file's whole metadata: what the writer derives from the model and
    tokenizer it writes (``general.architecture``, ``general.file_type``, the ``{arch}.*``
    hyperparameters, the vocabulary, the chat template, ``workbench.*``) is left out, and so
    is what describes the old file's encoding (``quantize.*``, ``split.*``). Tokenizer keys
    (special ids, flags) are kept only when a tokenizer is written and the ids fit its
    vocabulary. Everything else (``general.name``, ``general.license``, keys of your own) is
    kept. Returns ``key → (GGUF type name, or None to infer it from the value, value)``.

    Examples
    --------
    >>> md = {"general.name": "SmolLM2", "general.file_type": 3, "llama.block_count": 30,
    ...       "tokenizer.ggml.eot_token_id": 2, "quantize.imatrix.file": "x", "user.note": "hi"}
    >>> sorted(carried_metadata(md, "llama", None))
    ['general.name', 'user.note']
    """
    source_arch = md.get("general.architecture")
    owned = tuple(f"{a}." for a in {arch, source_arch} if isinstance(a, str))
    vocab = tokenizer.vocab_size if tokenizer is not None else 0
    out: dict[str, tuple[str | None, Any]] = {}
    for key, value in md.items():
        if (
            key in DERIVED_GENERAL_KEYS
            or key.startswith((*owned, *_STALE_NAMESPACES, "workbench."))
            or key == CHAT_TEMPLATE_KEY
        ):
            continue
        if key.startswith("tokenizer."):
            kind = _CARRIED_TOKENIZER_KEYS.get(key)
            if kind is None or tokenizer is None:
                continue
            if kind == "UINT32" and not (isinstance(value, int) and 0 <= value < vocab):
                continue
        out[key] = (_gguf_type(key, value), value)
    return out
