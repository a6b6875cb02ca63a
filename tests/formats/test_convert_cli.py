"""``workbench convert IN OUT [--to ...] [--dtype ...]``: formats, dtypes, what travels along."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
import torch

from tests.formats.test_chat_template_files import _bpe
from workbench.cli import main
from workbench.formats import detect_format, load_model, load_model_state, save_weights
from workbench.models import ModelConfig, Transformer

TEMPLATE = "{% for m in messages %}{{ m.content }}<|endoftext|>{% endfor %}"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A tiny llama GGUF with a chat template, a padding id and a name, as a llama.cpp file has."""
    tok = _bpe(TEMPLATE)
    tok.pad_id = 256
    model = Transformer(ModelConfig.preset("tiny-llama"), seed=2)
    return save_weights(
        model, tmp_path / "src.gguf", "gguf", "q8_0", tokenizer=tok,
        metadata={"general.name": "Tiny"},
    )  # fmt: skip


def test_gguf_to_f16_gguf_keeps_metadata(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.gguf"
    assert main(["convert", str(source), str(out), "--dtype", "float16"]) == 0
    assert "wrote" in capsys.readouterr().out
    fields = {k: f.contents() for k, f in gguf.GGUFReader(out).fields.items()}
    assert fields["general.name"] == "Tiny"
    assert fields["general.file_type"] == 1
    assert fields["tokenizer.chat_template"] == TEMPLATE
    assert fields["tokenizer.ggml.padding_token_id"] == 256
    model, tok = load_model(out, dtype="float32")
    ref, _ = load_model(source)
    assert tok.chat_template == TEMPLATE
    for name, t in ref.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], t, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    ("args", "fmt"),
    [
        (["--to", "safetensors"], "safetensors"),
        (["--to", "safetensors", "--hf-names"], "safetensors"),
        (["--to", "custom", "--dtype", "bfloat16"], "custom"),
        (["--to", "binary"], "binary"),
        (["--dtype", "q8_0", "--to", "gguf"], "gguf"),
    ],
)
def test_every_format(source: Path, tmp_path: Path, args: list[str], fmt: str) -> None:
    out = tmp_path / "out" / "model.weights"
    assert main(["convert", str(source), str(out), *args]) == 0
    assert detect_format(out) == fmt
    state = load_model_state(out)
    assert state.config == load_model_state(source).config
    assert state.tokenizer is not None and state.tokenizer.chat_template == TEMPLATE


def test_the_suffix_decides_without_to(source: Path, tmp_path: Path) -> None:
    assert main(["convert", str(source), str(tmp_path / "m.safetensors")]) == 0
    assert detect_format(tmp_path / "m.safetensors") == "safetensors"


def test_errors(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", str(source), str(tmp_path / "m.out")]) == 2
    assert "pass --to" in capsys.readouterr().err
    assert main(["convert", str(source), str(tmp_path / "m.st"), "--to", "safetensors",
                 "--dtype", "q8_0"]) == 2  # fmt: skip
    assert "--to gguf only" in capsys.readouterr().err
    (tmp_path / "junk").write_bytes(b"not weights at all")
    assert main(["convert", str(tmp_path / "junk"), str(tmp_path / "m.gguf")]) == 1
    assert "unrecognised format" in capsys.readouterr().err
    assert not (tmp_path / "m.gguf").exists()
