"""Shared cases of the chat tests: real templates with each model's special tokens, a toy
byte-level tokenizer carrying them, conversations, and transformers' tokenizer for the same."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from workbench.tokenizers import BPETokenizer, bpe_from_vocab

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"

_LLAMA3 = dict(
    bos="<|begin_of_text|>",
    eos="<|eot_id|>",
    specials=["<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|end_of_text|>"],
)
# Special tokens of each model, as its tokenizer declares them (GGUF ids aside).
MODELS: dict[str, dict[str, Any]] = {
    "smollm2-135m-instruct": dict(
        bos="<|im_start|>", eos="<|im_end|>", specials=["<|endoftext|>"], stops=["<|im_end|>"]
    ),
    "llama-3.3-70b-instruct": {**_LLAMA3, "stops": ["<|eot_id|>", "<|eom_id|>"]},
    "llama-3.2-3b-instruct": {**_LLAMA3, "stops": ["<|eot_id|>"]},
    "qwen2.5-7b-instruct": dict(
        bos=None,
        eos="<|im_end|>",
        specials=["<|endoftext|>", "<|im_start|>"],
        stops=["<|im_end|>"],
    ),
    "mistral-7b-instruct-v0.3": dict(
        bos="<s>",
        eos="</s>",
        specials=["[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]"],
        stops=["</s>"],
    ),
    "gemma-2-2b-it": dict(
        bos="<bos>",
        eos="<eos>",
        specials=["<start_of_turn>", "<end_of_turn>"],
        stops=["<eos>", "<end_of_turn>"],
    ),
}

SYSTEM = {"role": "system", "content": "You are terse.  "}
CONVERSATIONS: dict[str, list[dict[str, str]]] = {
    "user": [{"role": "user", "content": "What is 2+2?"}],
    "system+user": [SYSTEM, {"role": "user", "content": "What is 2+2?"}],
    "multi-turn": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": " Hello, how can I help? "},
        {"role": "user", "content": "Name a prime.\nJust one."},
    ],
    "system+multi-turn": [
        SYSTEM,
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Say «ünïcödé» & <tags>."},
    ],
    "ends-with-assistant": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
    ],
}


def byte_alphabet() -> list[str]:
    """GPT-2's printable spelling of each byte value."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def toy_tokenizer(model: str) -> BPETokenizer:
    """Byte-level BPE with no merges plus the model's special tokens, carrying its template."""
    spec = MODELS[model]
    specials = [t for t in (spec["bos"], spec["eos"], *spec["specials"]) if t is not None]
    tokens = byte_alphabet() + specials
    types = [1] * 256 + [3] * len(specials)
    tok = bpe_from_vocab(
        tokens,
        [],
        types,
        bos_id=tokens.index(spec["bos"]) if spec["bos"] else None,
        eos_id=tokens.index(spec["eos"]),
        chat_template=(TEMPLATES / f"{model}.jinja").read_text(encoding="utf-8"),
    )
    return tok


def import_transformers() -> Any:
    """transformers, offline (the chat tests never download), or a skip where it is missing."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return pytest.importorskip("transformers")


def hf_tokenizer(transformers: Any, tok: Any) -> Any:
    from tokenizers import Tokenizer as Core

    special = {}
    if tok.bos_id is not None:
        special["bos_token"] = tok.decode([tok.bos_id])
    special["eos_token"] = tok.decode([tok.eos_id])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=Core.from_str(tok.core.to_str()),
        chat_template=tok.chat_template,
        **special,
    )
