"""Detection by bytes, format contradictions, pickle refusal, strict loading, round trips."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from workbench.formats import (
    WeightLoadError,
    WeightSaveError,
    detect_format,
    load_model,
    load_weights,
    save_weights,
)
from workbench.formats.safetensors_io import write_safetensors
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer

FORMATS = ["safetensors", "binary", "custom"]


def _random_model(preset: str) -> Transformer:
    model = Transformer(ModelConfig.preset(preset), seed=3)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(7)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return model


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_bit_exact(preset: str, fmt: str, dtype: str, tmp_path: Path) -> None:
    model = _random_model(preset)
    path = save_weights(model, tmp_path / "w.weights", fmt, dtype, tokenizer=ByteTokenizer())  # type: ignore[arg-type]
    assert detect_format(path) == fmt
    loaded, tok = load_model(path)
    assert isinstance(tok, ByteTokenizer)
    target = getattr(torch, dtype)
    got = loaded.state_dict()
    for name, ref in model.state_dict().items():
        assert got[name].dtype == target
        assert torch.equal(got[name], ref.to(target)), name
    if dtype == "float32":
        ids = torch.tensor([[1, 2, 3, 250]])
        assert torch.equal(loaded(ids), model(ids))


def test_format_contradiction(tmp_path: Path) -> None:
    path = save_weights(_random_model("tiny-gpt2"), tmp_path / "w.st", "safetensors")
    with pytest.raises(WeightLoadError, match="is safetensors by its bytes, but format='gguf'"):
        load_weights(path, "gguf")
    with pytest.raises(WeightLoadError, match="but format='custom'"):
        load_weights(path, "custom")


def test_extension_lies(tmp_path: Path) -> None:
    path = tmp_path / "weights.gguf"
    write_safetensors(path, {"w": torch.ones(3)})
    assert load_weights(path).format == "safetensors"


def test_torch_pickle_refused_with_conversion_hint(tmp_path: Path) -> None:
    zipped = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2)}, zipped)
    legacy = tmp_path / "model.bin"
    legacy.write_bytes(pickle.dumps({"w": [1.0]}, protocol=2))
    for path in (zipped, legacy):
        with pytest.raises(WeightLoadError, match="pickle") as err:
            load_weights(path)
        assert "save_file(torch.load(" in str(err.value)


def test_strict_load_names_missing_and_unexpected(tmp_path: Path) -> None:
    model = _random_model("tiny-gpt2")
    state = model.state_dict()
    state.pop("blocks.0.attn.qkv.weight")
    state["blocks.0.bogus"] = torch.ones(1)
    path = tmp_path / "w.safetensors"
    import json

    from workbench.formats.safetensors_io import META_CONFIG

    write_safetensors(path, state, {META_CONFIG: json.dumps(model.cfg.to_dict())})
    with pytest.raises(WeightLoadError) as err:
        load_model(path)
    assert "missing keys (1): blocks.0.attn.qkv.weight" in str(err.value)
    assert "unexpected keys (1): blocks.0.bogus" in str(err.value)


def test_nonfinite_rejected_unless_allowed(tmp_path: Path) -> None:
    model = _random_model("tiny-llama")
    with torch.no_grad():
        model.norm.weight[0] = float("nan")
    for fmt in FORMATS:
        path = save_weights(model, tmp_path / f"w.{fmt}", fmt)  # type: ignore[arg-type]
        with pytest.raises(WeightLoadError, match="NaN or Inf"):
            load_weights(path)
        assert load_weights(path, allow_nonfinite=True).tensors


def test_f16_overflow_is_an_error(tmp_path: Path) -> None:
    model = _random_model("tiny-gpt2")
    with torch.no_grad():
        model.norm.weight[0] = 70000.0
    for fmt in FORMATS:
        with pytest.raises(WeightSaveError, match="65504"):
            save_weights(model, tmp_path / f"w.{fmt}", fmt, "float16")  # type: ignore[arg-type]


def test_no_tokenizer_needs_known_vocab(tmp_path: Path) -> None:
    model = Transformer(ModelConfig.preset("tiny-gpt2", vocab_size=300))
    path = save_weights(model, tmp_path / "w.st", "safetensors")
    with pytest.raises(WeightLoadError, match="vocabulary of 300"):
        load_model(path)
    bytes_model = Transformer(ModelConfig.preset("tiny-gpt2"))
    assert isinstance(
        load_model(save_weights(bytes_model, tmp_path / "b.st", "safetensors"))[1], ByteTokenizer
    )


def test_missing_path_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(WeightLoadError, match="does not exist"):
        load_weights(tmp_path / "nope")
    with pytest.raises(WeightLoadError, match="unknown format"):
        load_weights(tmp_path, "onnx")  # type: ignore[arg-type]


def test_gguf_dispatch(tmp_path: Path) -> None:
    pytest.importorskip("workbench.formats.gguf")
    model = _random_model("tiny-llama")
    path = save_weights(model, tmp_path / "w.safetensors", "gguf", tokenizer=ByteTokenizer())
    assert detect_format(path) == "gguf"
    loaded, _ = load_model(path)
    for name, ref in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], ref), name
