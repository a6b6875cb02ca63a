"""Hugging Face folders: ``config.json`` ↔ ``ModelConfig``, ``tokenizer.json`` ↔ tokenizer.

The boundary: this module knows the files a Hugging Face model folder keeps beside its
weights (``config.json``, ``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``),
reads and writes them (``config.json``'s keys are :mod:`workbench.formats.hf_config`'s), and lists them (:func:`companion_files`) for whoever must know what a
load opens. The chat template travels with the tokenizer (``tokenizer.chat_template``): read
from ``chat_template.jinja`` when the folder has one (transformers writes it there and reads it
first), else from ``tokenizer_config.json``'s ``chat_template`` (a string, or a list of named
templates of which "default" is taken), and written into ``tokenizer_config.json``.
Renaming parameters is :mod:`workbench.formats.hf_names`' job; the weights themselves are
:mod:`workbench.formats.safetensors_io`'s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizerCore

from workbench.formats import opener
from workbench.formats._common import (
    MAX_JSON_FILE_BYTES,
    WeightLoadError,
    atomic_writer,
    read_json_file,
)
from workbench.formats.hf_config import UnsupportedModelError, config_from_hf, config_to_hf
from workbench.models.config import ModelConfig
from workbench.tokenizers import BPETokenizer, Tokenizer

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"  # special tokens, add_bos_token, chat template
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers' own file for the template
# What write_description may write, in that order.
WRITTEN_FILES = (CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE)

__all__ = [
    "CHAT_TEMPLATE_FILE",
    "CONFIG_FILE",
    "TOKENIZER_CONFIG_FILE",
    "TOKENIZER_FILE",
    "WRITTEN_FILES",
    "UnsupportedModelError",
    "chat_template_from_config",
    "companion_files",
    "config_from_hf",
    "config_to_hf",
    "hf_tokenizer",
    "read_description",
    "write_description",
]


def companion_files(folder: Path) -> list[Path]:
    """The files :func:`read_description` may read in ``folder`` (whether or not they exist).

    Examples
    --------
    >>> [p.name for p in companion_files(Path("model"))]
    ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'chat_template.jinja']
    """
    names = (CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, CHAT_TEMPLATE_FILE)
    return [folder / name for name in names]


def chat_template_from_config(tcfg: Mapping[str, Any], where: str) -> str | None:
    """The chat template of a ``tokenizer_config.json`` object; None when it has none.

    A string is the template; a list of ``{"name", "template"}`` objects (transformers' named
    templates) gives the one named "default" (None without one).

    Examples
    --------
    >>> chat_template_from_config({"chat_template": "{{ messages }}"}, "t")
    '{{ messages }}'
    >>> chat_template_from_config(
    ...     {"chat_template": [{"name": "tool_use", "template": "T"},
    ...                        {"name": "default", "template": "D"}]}, "t")
    'D'
    """
    raw = tcfg.get("chat_template")
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(raw, list) and all(
        isinstance(t, dict)
        and isinstance(t.get("name"), str)
        and isinstance(t.get("template"), str)
        for t in raw
    ):
        named = {t["name"]: t["template"] for t in raw}
        return named.get("default")
    raise WeightLoadError(
        f"{where}: chat_template must be a string or a list of {{name, template}} objects, got "
        f"{type(raw).__name__}; fix or remove it"
    )


def _read_template_file(path: Path) -> str:
    # Opened as named, like the JSON files here: the caller confines the folder (api pins it).
    try:
        with opener.open_file(path) as f:
            raw = f.read(MAX_JSON_FILE_BYTES + 1)
    except OSError as e:
        raise WeightLoadError(f"cannot read chat template {path}: {e}") from None
    if len(raw) > MAX_JSON_FILE_BYTES:
        raise WeightLoadError(f"chat template {path} is larger than {MAX_JSON_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WeightLoadError(
            f"chat template {path} is not valid UTF-8 ({e.reason} at byte {e.start})"
        ) from None


def _token_id(core: HFTokenizerCore, token: Any) -> int | None:
    token = token.get("content") if isinstance(token, dict) else token
    found = core.token_to_id(token) if isinstance(token, str) else None
    return None if found is None else int(found)


def hf_tokenizer(folder: Path, hf_config: Mapping[str, Any] | None) -> Tokenizer | None:
    """A ``BPETokenizer`` from ``tokenizer.json`` in ``folder``, or None when there is none.

    ``tokenizer_config.json`` gives BOS/EOS (when ``config.json`` does not), ``add_bos_token``,
    the padding and unknown tokens (as ``pad_id``/``unk_id``) and the chat template, which
    ``chat_template.jinja`` overrides, as in transformers.
    """
    path = folder / TOKENIZER_FILE
    if not path.is_file():
        return None
    read_json_file(path, "tokenizer")  # bounded and parsed before the library sees it
    try:
        core = HFTokenizerCore.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception
        raise WeightLoadError(f"{path}: not a tokenizers file: {e}") from None
    extra = folder / TOKENIZER_CONFIG_FILE
    tcfg = read_json_file(extra, "tokenizer config") if extra.is_file() else {}
    tcfg = tcfg if isinstance(tcfg, dict) else {}
    ids: dict[str, int | None] = {}
    for role in ("bos", "eos"):
        value = (hf_config or {}).get(f"{role}_token_id")
        if isinstance(value, list):
            value = value[0] if value else None
        if not isinstance(value, int):
            value = _token_id(core, tcfg.get(f"{role}_token"))
        ids[role] = value
    template = chat_template_from_config(tcfg, TOKENIZER_CONFIG_FILE)
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        template = _read_template_file(folder / CHAT_TEMPLATE_FILE)
    tok = BPETokenizer(
        core,
        bos_id=ids["bos"],
        eos_id=ids["eos"],
        add_bos=bool(tcfg.get("add_bos_token", False)),
        name=folder.name or "hf",
    )
    tok.chat_template = template
    tok.pad_id = _token_id(core, tcfg.get("pad_token"))
    tok.unk_id = _token_id(core, tcfg.get("unk_token"))
    return tok


def read_description(folder: Path) -> tuple[ModelConfig, Tokenizer | None] | None:
    """The config and tokenizer that ``folder``'s Hugging Face files describe.

    None when the folder has no ``config.json``; the tokenizer is None without
    ``tokenizer.json``.
    """
    path = folder / CONFIG_FILE
    if not path.is_file():
        return None
    hf_cfg = read_json_file(path, "Hugging Face config")
    if not isinstance(hf_cfg, dict):
        raise WeightLoadError(f"{path} must hold a JSON object")
    return config_from_hf(hf_cfg), hf_tokenizer(folder, hf_cfg)


def tokenizer_config(tokenizer: BPETokenizer, cfg: ModelConfig) -> dict[str, Any]:
    """The ``tokenizer_config.json`` transformers reads beside ``tokenizer.json``."""
    out: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": tokenizer.add_bos,
        "model_max_length": cfg.n_ctx,
    }
    for role, tid in (
        ("bos", tokenizer.bos_id),
        ("eos", tokenizer.eos_id),
        ("pad", getattr(tokenizer, "pad_id", None)),
        ("unk", getattr(tokenizer, "unk_id", None)),
    ):
        text = tokenizer.core.id_to_token(tid) if isinstance(tid, int) else None
        if text is not None:
            out[f"{role}_token"] = text
    template = getattr(tokenizer, "chat_template", None)
    if template is not None:
        out["chat_template"] = template
    return out


def write_description(folder: Path, cfg: ModelConfig, tokenizer: Tokenizer | None) -> None:
    """Write ``config.json`` into ``folder``, and for a BPE tokenizer ``tokenizer.json`` and
    ``tokenizer_config.json`` (special tokens, ``add_bos_token``, the chat template)."""
    hf_cfg = config_to_hf(cfg)
    if tokenizer is not None:
        hf_cfg.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
    with atomic_writer(folder / CONFIG_FILE) as f:
        f.write(json.dumps(hf_cfg, indent=2).encode())
    if isinstance(tokenizer, BPETokenizer):
        with atomic_writer(folder / TOKENIZER_FILE) as f:
            f.write(tokenizer.core.to_str().encode())
        with atomic_writer(folder / TOKENIZER_CONFIG_FILE) as f:
            f.write(json.dumps(tokenizer_config(tokenizer, cfg), indent=2).encode())
