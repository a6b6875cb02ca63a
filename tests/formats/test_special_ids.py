"""A tokenizer's unknown and padding ids survive every save: checkpoint, SafeTensors (ours and
Hugging Face's layout), raw binary and GGUF, checked against the ``gguf`` and ``transformers``
libraries where a file has a reader of its own."""

from __future__ import annotations

import json
import random
from pathlib import Path

import gguf
import pytest

from workbench.formats import load_checkpoint, load_model, save_checkpoint, save_weights
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import BPETokenizer, ByteTokenizer, bpe_from_vocab

SPECIALS = ["<|endoftext|>", "<pad>", "<unk>", "<extra>"]


def _tokenizer(seed: int) -> BPETokenizer:
    """A byte-level vocabulary plus control tokens, with randomly drawn special ids."""
    rng = random.Random(seed)
    tokens = [chr(0x100 + i) for i in range(256)] + SPECIALS
    types = [1] * 256 + [3] * len(SPECIALS)
    unk_id, pad_id = rng.sample(range(len(tokens)), 2)
    return bpe_from_vocab(tokens, [], types, bos_id=256, eos_id=256, unk_id=unk_id, pad_id=pad_id)


def _model(tok: BPETokenizer | ByteTokenizer) -> Transformer:
    return Transformer(ModelConfig.preset("tiny-llama", vocab_size=tok.vocab_size), seed=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fmt", ["custom", "safetensors", "binary", "gguf"])
def test_load_model_keeps_the_ids(tmp_path: Path, fmt: str, seed: int) -> None:
    tok = _tokenizer(seed)
    path = save_weights(_model(tok), tmp_path / f"w.{fmt}", fmt, tokenizer=tok)  # type: ignore[arg-type]
    _, again = load_model(path)
    assert isinstance(again, BPETokenizer)
    assert (again.unk_id, again.pad_id) == (tok.unk_id, tok.pad_id)
    assert again.encode("a<pad>b") == tok.encode("a<pad>b")


def test_checkpoint_keeps_the_ids(tmp_path: Path) -> None:
    tok = _tokenizer(3)
    ck = load_checkpoint(save_checkpoint(tmp_path / "c.ckpt", _model(tok), tok))
    assert isinstance(ck.tokenizer, BPETokenizer)
    assert (ck.tokenizer.unk_id, ck.tokenizer.pad_id) == (tok.unk_id, tok.pad_id)
    # The byte tokenizer has the fields too (bytes need no unknown token, padding may be set).
    byte = ByteTokenizer(pad_id=256)
    ck = load_checkpoint(save_checkpoint(tmp_path / "b.ckpt", _model(byte), byte))
    assert isinstance(ck.tokenizer, ByteTokenizer)
    assert (ck.tokenizer.unk_id, ck.tokenizer.pad_id) == (None, 256)


def test_gguf_library_reads_the_ids(tmp_path: Path) -> None:
    tok = _tokenizer(4)
    path = save_weights(_model(tok), tmp_path / "w.gguf", "gguf", tokenizer=tok)
    fields = gguf.GGUFReader(path).fields
    assert fields["tokenizer.ggml.padding_token_id"].contents() == tok.pad_id
    assert fields["tokenizer.ggml.unknown_token_id"].contents() == tok.unk_id


def test_transformers_reads_the_hf_layout_ids(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tok = _tokenizer(5)
    path = save_weights(
        _model(tok), tmp_path / "model.safetensors", "safetensors", tokenizer=tok, hf_names=True
    )
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert tok.pad_id is not None and tok.core.id_to_token(tok.pad_id) == config["pad_token"]
    theirs = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert (theirs.unk_token_id, theirs.pad_token_id) == (tok.unk_id, tok.pad_id)
    _, ours = load_model(path)
    assert isinstance(ours, BPETokenizer)
    assert (ours.unk_id, ours.pad_id) == (tok.unk_id, tok.pad_id)
