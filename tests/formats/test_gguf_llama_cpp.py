"""GGUF files as llama.cpp reads and writes them (issue #14): pre-tokenizer names, the metadata
a save carries over (chat template, special ids, general.name) with llama.cpp's types, rope
scaling refused, and one dtype for every float of a model loaded from F16/BF16 files."""

from __future__ import annotations

import logging
from pathlib import Path

import gguf
import pytest
import torch
from gguf import GGUFValueType as V

from tests.formats.gguf_edit import rewrite_metadata
from workbench.formats import (
    WeightLoadError,
    WeightSaveError,
    build_model,
    load_model,
    load_model_state,
    save_weights,
)
from workbench.formats import loading as formats_loading
from workbench.formats.gguf import read_gguf, read_gguf_model_state, write_gguf
from workbench.formats.gguf_names import _byte_alphabet, tokenizer_to_metadata
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import (
    SUPPORTED_PRE,
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    bpe_from_vocab,
    gpt2_tokenizer,
)

DATA = Path(__file__).parent / "data"
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.content }}<|endoftext|>{% endfor %}"


def llama_cpp_pre_names() -> set[str]:
    lines = (DATA / "llama_cpp_pre_tokenizers.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def byte_bpe(**kw: object) -> BPETokenizer:
    """A byte-level BPE vocabulary (no merges) with ``<|endoftext|>`` = 256."""
    return bpe_from_vocab(
        [*_byte_alphabet(), "<|endoftext|>"],
        [],
        [1] * 256 + [3],
        bos_id=256,
        eos_id=256,
        **kw,  # type: ignore[arg-type]
    )


def chat_tokenizer() -> BPETokenizer:
    tok = byte_bpe()
    tok.chat_template = TEMPLATE
    tok.unk_id = 0
    tok.pad_id = 256
    return tok


def tiny(family: str = "llama") -> Transformer:
    return Transformer(ModelConfig.preset(f"tiny-{family}"), seed=1).eval()


def fields(path: Path) -> dict[str, tuple[V, object]]:
    """Every key of ``path`` as gguf-py reads it: (value type, value)."""
    reader = gguf.GGUFReader(path)
    return {k: (f.types[0], f.contents()) for k, f in reader.fields.items()}


# ---------------------------------------------------------------------------- pre-tokenizers


def test_the_name_list_is_llama_cpps() -> None:
    names = llama_cpp_pre_names()
    assert {"default", "gpt-2", "smollm", "llama-bpe", "qwen2"} <= names
    assert "gpt2" not in names  # the spelling older exports of ours wrote, which llama.cpp refuses


def pre_of(tok: Tokenizer) -> str:
    return str(tokenizer_to_metadata(tok)["tokenizer.ggml.pre"][1])


@pytest.mark.parametrize("pre", SUPPORTED_PRE)
def test_every_pre_tokenizer_we_read_is_written_as_llama_cpp_spells_it(pre: str) -> None:
    tok = byte_bpe(pre=pre)
    assert pre_of(tok) in llama_cpp_pre_names()
    tok.name = "some-hf-folder"  # a tokenizer.json's name says nothing; its structure does
    assert pre_of(tok) in llama_cpp_pre_names()


def test_gpt2_and_byte_tokenizers_get_accepted_names(tmp_path: Path) -> None:
    names = llama_cpp_pre_names()
    assert pre_of(gpt2_tokenizer()) == "gpt-2"
    assert pre_of(ByteTokenizer()) in names
    assert pre_of(byte_bpe(pre="gpt2")) == "gpt-2"  # a file from an older export of ours
    path = save_weights(tiny("gpt2"), tmp_path / "gpt2.gguf", "gguf", tokenizer=gpt2_tokenizer())
    assert fields(path)["tokenizer.ggml.pre"] == (V.STRING, "gpt-2")


def test_structure_decides_the_name_of_an_unnamed_tokenizer() -> None:
    for pre, expected in (("smollm", "smollm"), ("llama3", "llama-bpe"), ("qwen2", "qwen2")):
        tok = byte_bpe(pre=pre)
        tok.name = "folder"
        assert pre_of(tok) == expected
    odd = byte_bpe()
    odd.name = "folder"
    odd.core.pre_tokenizer = None
    with pytest.warns(UserWarning, match="matches none llama.cpp names"):
        assert pre_of(odd) == "default"


# ---------------------------------------------------------------------------- metadata


def test_chat_template_special_ids_and_name_survive_a_round_trip(tmp_path: Path) -> None:
    first = tmp_path / "first.gguf"
    meta = {"general.name": "Tiny Chat", "general.languages": ["en", "fr"], "user.note": "é"}
    save_weights(tiny(), first, "gguf", tokenizer=chat_tokenizer(), metadata=meta)
    state = load_model_state(first)
    tok = state.tokenizer
    assert tok is not None and tok.chat_template == TEMPLATE
    assert (getattr(tok, "unk_id", None), getattr(tok, "pad_id", None)) == (0, 256)
    assert state.metadata["general.name"] == "Tiny Chat"

    # Saving what was loaded, its metadata passed along, writes the same keys again.
    second = tmp_path / "second.gguf"
    save_weights(
        build_model(state), second, "gguf", "float16", tokenizer=tok, metadata=state.metadata
    )
    got = fields(second)
    assert got["tokenizer.chat_template"] == (V.STRING, TEMPLATE)
    assert got["tokenizer.ggml.unknown_token_id"] == (V.UINT32, 0)
    assert got["tokenizer.ggml.padding_token_id"] == (V.UINT32, 256)
    assert got["tokenizer.ggml.bos_token_id"] == (V.UINT32, 256)
    assert got["general.name"] == (V.STRING, "Tiny Chat")
    assert got["general.languages"] == (V.ARRAY, ["en", "fr"])
    assert got["user.note"] == (V.STRING, "é")
    assert got["general.file_type"] == (V.UINT32, 1)  # F16 now, not the source's F32
    again = load_model_state(second)
    assert again.tokenizer is not None and again.tokenizer.chat_template == TEMPLATE
    assert getattr(again.tokenizer, "pad_id", None) == 256


def test_a_loaded_byte_tokenizer_keeps_its_template(tmp_path: Path) -> None:
    tok = ByteTokenizer()
    tok.chat_template = TEMPLATE
    path = save_weights(tiny(), tmp_path / "b.gguf", "gguf", tokenizer=tok)
    _, back = load_model(path)
    assert isinstance(back, ByteTokenizer) and back.chat_template == TEMPLATE


def test_keys_the_writer_derives_are_never_copied(tmp_path: Path) -> None:
    model = tiny()
    stale = {
        "general.architecture": "gpt2",
        "general.file_type": 3,  # Q4_1: what the source was, not what is written
        "general.quantization_version": 2,
        "general.alignment": 64,
        "llama.block_count": 99,
        "tokenizer.ggml.tokens": ["a"],
        "tokenizer.chat_template": "stale",
        "quantize.imatrix.file": "imatrix.dat",
        "workbench.config": "{}",
        "tokenizer.ggml.eot_token_id": 10**6,  # outside the vocabulary written
        "tokenizer.ggml.eom_token_id": 7,
    }
    path = tmp_path / "m.gguf"
    write_gguf(path, model.state_dict(), model.cfg, byte_bpe(), metadata=stale)
    got = fields(path)
    assert got["general.architecture"] == (V.STRING, "llama")
    assert got["general.file_type"] == (V.UINT32, 0)
    assert got["general.alignment"] == (V.UINT32, 32)
    assert "general.quantization_version" not in got and "quantize.imatrix.file" not in got
    assert got["llama.block_count"] == (V.UINT32, model.cfg.n_layer)
    assert "tokenizer.chat_template" not in got
    assert "tokenizer.ggml.eot_token_id" not in got
    assert got["tokenizer.ggml.eom_token_id"] == (V.UINT32, 7)
    assert read_gguf_model_state(path).config == model.cfg
    # Without a tokenizer no tokenizer key is carried.
    write_gguf(path, model.state_dict(), model.cfg, None, metadata=stale)
    assert not any(k.startswith("tokenizer.") for k in fields(path))


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"llama.rope.scaling.type": ("STRING", "linear")}, None),  # no factor: unscaled
        (
            {
                "llama.rope.scaling.type": ("STRING", "yarn"),
                "llama.rope.scaling.factor": ("FLOAT32", 4.0),
            },
            "'yarn'",
        ),
        ({"llama.rope.scale_linear": ("FLOAT32", 2.0)}, None),  # linear scaling: supported
        ({"llama.rope.scaling.type": ("STRING", "longrope")}, "rope scaling is not supported"),
        ({"llama.rope.scaling.type": ("STRING", "none")}, None),
        ({"llama.rope.scaling.factor": ("FLOAT32", 1.0)}, None),
    ],
)
def test_rope_scaling_is_refused(
    tmp_path: Path, changes: dict[str, tuple[str, object]], error: str | None
) -> None:
    src = tmp_path / "src.gguf"
    model = tiny()
    write_gguf(src, model.state_dict(), model.cfg, ByteTokenizer())
    dst = tmp_path / "scaled.gguf"
    rewrite_metadata(src, dst, {"workbench.config": None, **changes})  # the llama.cpp keys decide
    if error is None:
        assert read_gguf_model_state(dst).config.n_layer == model.cfg.n_layer
        return
    with pytest.raises(WeightLoadError, match=error):
        read_gguf_model_state(dst)
    with pytest.raises(WeightLoadError, match=error):
        load_model(dst)


def test_one_pass_and_two_pass_loads_agree(tmp_path: Path) -> None:
    from workbench.formats.gguf import gguf_model_state

    model = tiny()
    path = tmp_path / "q8.gguf"
    write_gguf(path, model.state_dict(), model.cfg, chat_tokenizer(), dtype="q8_0")
    one = read_gguf_model_state(path)
    two = gguf_model_state(read_gguf(path))
    assert one.config == two.config and one.metadata == two.metadata
    assert list(one.state_dict) == list(two.state_dict)
    for k, v in one.state_dict.items():
        assert torch.equal(v, two.state_dict[k]), k


# ---------------------------------------------------------------------------- one dtype


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize(
    ("file_dtype", "torch_dtype"), [("float16", torch.float16), ("bfloat16", torch.bfloat16)]
)
def test_half_files_build_one_dtype_and_generate(
    tmp_path: Path, family: str, file_dtype: str, torch_dtype: torch.dtype
) -> None:
    path = save_weights(
        tiny(family), tmp_path / "h.gguf", "gguf", file_dtype, tokenizer=ByteTokenizer()
    )
    assert {t.dtype for t in read_gguf(path).tensors.values()} == {torch.float32, torch_dtype}
    model, tok = load_model(path)
    expected, _ = formats_loading.model_dtype(load_model_state(path).state_dict)
    assert expected in (torch_dtype, torch.float32)
    assert {p.dtype for p in model.parameters()} == {expected}
    ids = torch.tensor([tok.encode("hi")])
    with torch.no_grad():
        assert model.generate(ids, max_new_tokens=3).shape == (1, ids.shape[1] + 3)
    model32, _ = load_model(path, dtype="float32")
    assert {p.dtype for p in model32.parameters()} == {torch.float32}


def test_without_native_half_kernels_the_model_is_float32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = save_weights(tiny(), tmp_path / "h.gguf", "gguf", "float16", tokenizer=ByteTokenizer())
    monkeypatch.setattr(formats_loading, "_half_is_native", lambda dtype, device: False)
    with caplog.at_level(logging.INFO, logger="workbench.formats.loading"):
        model, _ = load_model(path)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert "float32: the weights are float16" in caplog.text
    monkeypatch.setattr(formats_loading, "_half_is_native", lambda dtype, device: True)
    model, _ = load_model(path)
    assert {p.dtype for p in model.parameters()} == {torch.float16}


def test_model_dtype_follows_the_main_type() -> None:
    sd = {"w": torch.zeros(8, 8, dtype=torch.bfloat16), "norm": torch.zeros(8)}
    dtype, why = formats_loading.model_dtype(sd, "cpu")
    assert dtype in (torch.bfloat16, torch.float32) and why.startswith(str(dtype)[6:])
    assert formats_loading.model_dtype({"w": torch.zeros(2)})[0] == torch.float32
    assert formats_loading.model_dtype({})[0] == torch.float32


def test_f16_overflow_is_refused_and_leaves_no_file(tmp_path: Path) -> None:
    model = tiny()
    weights = model.state_dict()  # shares the parameters' storage
    weights["blocks.0.mlp.up.weight"][3, 5] = 70000.0
    weights["norm.weight"][0] = 1e9  # 1-D tensors stay F32 in GGUF, as llama.cpp's converter
    path = tmp_path / "m.gguf"
    with pytest.raises(WeightSaveError, match=r"blocks\.0\.mlp\.up\.weight holds 70000, beyond"):
        save_weights(model, path, "gguf", "float16")
    assert list(tmp_path.iterdir()) == []
    weights["blocks.0.mlp.up.weight"][3, 5] = 65504.0  # the largest float16 is fine
    save_weights(model, path, "gguf", "float16")
    assert read_gguf(path).tensors["blk.0.ffn_up.weight"][3, 5].item() == 65504.0


def test_ids_the_tokenizer_lost_come_from_the_metadata(tmp_path: Path) -> None:
    src = tmp_path / "src.gguf"
    save_weights(tiny(), src, "gguf", tokenizer=chat_tokenizer())
    state = load_model_state(src)
    # A checkpoint's tokenizer JSON keeps no padding id: the file's metadata still has it.
    plain = byte_bpe()
    out = save_weights(build_model(state), tmp_path / "o.gguf", "gguf", tokenizer=plain,
                       metadata=state.metadata)  # fmt: skip
    assert fields(out)["tokenizer.ggml.padding_token_id"] == (V.UINT32, 256)
    # The tokenizer's own id wins over the metadata's.
    plain.pad_id = 5
    out = save_weights(build_model(state), tmp_path / "p.gguf", "gguf", tokenizer=plain,
                       metadata=state.metadata)  # fmt: skip
    assert fields(out)["tokenizer.ggml.padding_token_id"] == (V.UINT32, 5)
