from __future__ import annotations

import json

import pytest

from workbench.tokenizers import (
    ByteTokenizer,
    Tokenizer,
    TokenizerError,
    bpe_from_vocab,
    gpt2_tokenizer,
    tokenizer_from_json,
)

SAMPLES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Crème brûlée, naïve façade, Ångström, ñandú",
    "日本語のテキストと中文字符",
    "emoji 🤖👩‍👩‍👧‍👦🏳️‍🌈 mixed",
    "tabs\tand\n\nnewlines   and    runs     of spaces  ",
    "   leading and trailing   ",
    "",
    "digits 1234567890 and punctuation !?.,;:'\"()[]{}",
    "a<|endoftext|>b",
]


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return gpt2_tokenizer()


@pytest.mark.parametrize("text", SAMPLES)
def test_byte_round_trip(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


@pytest.mark.parametrize("text", SAMPLES)
def test_gpt2_round_trip(gpt2: Tokenizer, text: str) -> None:
    ids = gpt2.encode(text)
    assert all(0 <= i < gpt2.vocab_size for i in ids)
    assert gpt2.decode(ids) == text


def test_gpt2_known_ids(gpt2: Tokenizer) -> None:
    assert gpt2.vocab_size == 50257
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode("<|endoftext|>") == [50256]
    assert gpt2.eos_id == 50256 and gpt2.bos_id == 50256
    assert gpt2.encode(" Paris") == [6342]
    assert gpt2.encode("Hello world<|endoftext|>") == [15496, 995, 50256]


def test_gpt2_matches_transformers_tokenizer_on_random_text(gpt2: Tokenizer, tmp_path) -> None:
    """Our assembly of GPT-2's BPE against transformers' GPT2Tokenizer on the same files."""
    transformers = pytest.importorskip("transformers")
    import random
    import shutil

    from workbench.tokenizers import _gpt2_data_files

    enc, merges = _gpt2_data_files()
    shutil.copy(enc, tmp_path / "vocab.json")
    shutil.copy(merges, tmp_path / "merges.txt")
    ref = transformers.GPT2Tokenizer.from_pretrained(str(tmp_path))
    assert ref.encode("Hello world") == [15496, 995]
    rnd = random.Random(0)
    alphabet = "abcdefghij KLMNOP  éü中🙂\n\t0123'.,!-"
    for _ in range(200):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40)))
        assert gpt2.encode(text) == ref.encode(text), text


def test_byte_decode_is_total() -> None:
    tok = ByteTokenizer()
    assert tok.decode([0xE2, 0x82]) == "\ufffd"  # a cut multi-byte character
    assert tok.decode([104, 256, 105]) == "h<|endoftext|>i"


def _tiny_byte_level_vocab() -> tuple[list[str], list[str]]:
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [*alphabet, "Ġt", "he", "Ġthe", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he"]
    return tokens, merges


def test_bpe_from_vocab_applies_merges_and_specials() -> None:
    tokens, merges = _tiny_byte_level_vocab()
    types = [1] * (len(tokens) - 2) + [3, 3]
    tok = bpe_from_vocab(
        tokens, merges, types, pre="smollm", bos_id=len(tokens) - 2, eos_id=len(tokens) - 1
    )
    ids = tok.encode("<|im_start|> the 42<|im_end|>")
    assert ids[0] == tokens.index("<|im_start|>")
    assert tokens.index("Ġthe") in ids
    assert ids[-1] == tokens.index("<|im_end|>")
    # smollm splits digits one by one.
    assert tokens.index("4") in ids and tokens.index("2") in ids
    assert tok.decode(ids) == "<|im_start|> the 42<|im_end|>"


@pytest.mark.parametrize("pre", ["default", "smollm", "llama-bpe", "qwen2"])
@pytest.mark.parametrize("text", SAMPLES)
def test_bpe_from_vocab_round_trips(pre: str, text: str) -> None:
    tokens, merges = _tiny_byte_level_vocab()
    tok = bpe_from_vocab(tokens, merges, pre=pre)
    assert tok.decode(tok.encode(text)) == text.replace("<|endoftext|>", "<|endoftext|>")


def test_sentencepiece_style_vocab_with_byte_fallback() -> None:
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tokens = ["<unk>", "<s>", "</s>", *byte_tokens, "▁", "h", "i", "▁h", "▁hi", "é"]
    types = [2, 3, 3] + [6] * 256 + [1] * 6
    scores = [0.0] * 259 + [-1.0, -2.0, -3.0, -0.5, -0.1, -4.0]
    tok = bpe_from_vocab(
        tokens,
        None,
        types,
        model="llama",
        scores=scores,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        add_bos=True,
    )
    ids = tok.encode("hi hi 中")
    assert ids[0] == 1
    assert ids.count(tokens.index("▁hi")) == 2
    assert tokens.index("<0xE4>") in ids  # 中 falls back to bytes
    assert tok.decode(ids[1:]) == "hi hi 中"


def test_json_round_trip(gpt2: Tokenizer) -> None:
    for tok in (ByteTokenizer(), gpt2):
        again = tokenizer_from_json(tok.to_json())
        assert again.vocab_size == tok.vocab_size and again.eos_id == tok.eos_id
        for text in SAMPLES:
            assert again.encode(text) == tok.encode(text)


def test_special_ids_are_fields_that_survive_json() -> None:
    bpe = bpe_from_vocab(["a", "b", "<unk>", "<pad>"], [], [1, 1, 2, 3], unk_id=2, pad_id=3)
    assert (bpe.unk_id, bpe.pad_id) == (2, 3)
    for tok in (bpe, ByteTokenizer(pad_id=256)):
        again = tokenizer_from_json(tok.to_json())
        assert type(again) is type(tok)
        assert (getattr(again, "unk_id", "?"), getattr(again, "pad_id", "?")) == (
            tok.unk_id,
            tok.pad_id,
        )
    # Set after construction (as a reader does), the ids travel too.
    bpe.pad_id = 0
    assert getattr(tokenizer_from_json(bpe.to_json()), "pad_id", "?") == 0
    # JSON written before the fields existed has neither: both None.
    old = json.loads(bpe.to_json())
    del old["unk_id"], old["pad_id"]
    again = tokenizer_from_json(json.dumps(old))
    assert (getattr(again, "unk_id", "?"), getattr(again, "pad_id", "?")) == (None, None)
    for bad in ("3", 1.5, True, [3]):
        with pytest.raises(TokenizerError, match="pad_id must be an integer"):
            tokenizer_from_json(json.dumps({**old, "pad_id": bad}))
    with pytest.raises(TokenizerError, match="pad id 9 is outside"):
        bpe_from_vocab(["a"], pad_id=9)


def test_bad_inputs_raise_tokenizer_error() -> None:
    with pytest.raises(TokenizerError, match="empty"):
        bpe_from_vocab([])
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        bpe_from_vocab(["a"], eos_id=5)
    with pytest.raises(TokenizerError, match="token types"):
        bpe_from_vocab(["a", "b"], token_types=[1])
    with pytest.raises(TokenizerError, match="unsupported tokenizer model"):
        bpe_from_vocab(["a"], model="wordpiece")
    with pytest.raises(TokenizerError):
        tokenizer_from_json("{not json")
    with pytest.raises(TokenizerError, match="unknown tokenizer kind"):
        tokenizer_from_json('{"kind": "morse"}')
