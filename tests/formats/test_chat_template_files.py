"""The chat template travels with the tokenizer through every file that can hold it (issue #12):
Hugging Face ``tokenizer_config.json`` / ``chat_template.jinja``, SafeTensors with HF names, our
checkpoint and SafeTensors metadata, GGUF (tested in test_gguf_llama_cpp.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.formats.test_files import _opened_by
from workbench.formats import (
    WeightLoadError,
    companion_files,
    load_checkpoint,
    load_model,
    load_model_state,
    load_weights,
    save_checkpoint,
    save_weights,
    saved_files,
)
from workbench.formats.hf import chat_template_from_config
from workbench.formats.safetensors_io import write_safetensors
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import BPETokenizer, ByteTokenizer, bpe_from_vocab

TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}<|endoftext|>{% endfor %}"
OTHER = "{{ messages[0].content }}"


def _model() -> Transformer:
    return Transformer(ModelConfig.preset("tiny-llama"), seed=5)


def _bpe(template: str | None = TEMPLATE) -> BPETokenizer:
    tok = bpe_from_vocab(
        [chr(0x100 + i) for i in range(256)] + ["<|endoftext|>"],
        [],
        [1] * 256 + [3],
        bos_id=256,
        eos_id=256,
    )
    tok.chat_template = template
    return tok


def _hf_folder(folder: Path, template: str | None = TEMPLATE) -> Path:
    """A Hugging Face folder written by us, then stripped of our own metadata."""
    path = save_weights(
        _model(),
        folder / "model.safetensors",
        "safetensors",
        hf_names=True,
        tokenizer=_bpe(template),
    )
    write_safetensors(path, {k: v.clone() for k, v in load_weights(path).tensors.items()})
    return path


def test_hf_save_writes_the_template_into_tokenizer_config(tmp_path: Path) -> None:
    path = _hf_folder(tmp_path)
    tcfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert tcfg["chat_template"] == TEMPLATE
    assert tcfg["eos_token"] == "<|endoftext|>" and tcfg["add_bos_token"] is False
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(p.name for p in saved_files(path, "safetensors", hf_names=True))
    _, tok = load_model(tmp_path)
    assert tok.chat_template == TEMPLATE


def test_transformers_reads_our_template(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    _hf_folder(tmp_path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf_tok.chat_template == TEMPLATE
    messages = [{"role": "user", "content": "hi"}]
    _, ours = load_model(tmp_path)
    assert hf_tok.apply_chat_template(messages, tokenize=False) == ours.apply_chat_template(
        messages, add_generation_prompt=False
    )


def test_jinja_file_wins_over_tokenizer_config(tmp_path: Path) -> None:
    _hf_folder(tmp_path)
    (tmp_path / "chat_template.jinja").write_text(OTHER)
    _, tok = load_model(tmp_path)
    assert tok.chat_template == OTHER
    assert "chat_template.jinja" in [p.name for p in companion_files(tmp_path)]
    # Every file the load opens is one companion_files lists (the audit of test_files.py).
    listed = {os.path.realpath(p) for p in companion_files(tmp_path)}
    opened = _opened_by(lambda: load_model(tmp_path))
    inside = {p for p in opened if Path(p).is_relative_to(os.path.realpath(tmp_path))}
    assert inside <= listed | {os.path.realpath(tmp_path)}


def test_named_templates_give_the_default(tmp_path: Path) -> None:
    _hf_folder(tmp_path, template=None)
    tcfg_path = tmp_path / "tokenizer_config.json"
    tcfg = json.loads(tcfg_path.read_text())
    assert "chat_template" not in tcfg
    tcfg["chat_template"] = [
        {"name": "tool_use", "template": OTHER},
        {"name": "default", "template": TEMPLATE},
    ]
    tcfg_path.write_text(json.dumps(tcfg))
    _, tok = load_model(tmp_path)
    assert tok.chat_template == TEMPLATE
    assert (
        chat_template_from_config({"chat_template": [{"name": "x", "template": "y"}]}, "t") is None
    )


@pytest.mark.parametrize("bad", [3, {"default": "x"}, [{"name": "default"}], ["x"]])
def test_a_template_of_the_wrong_type_is_refused(tmp_path: Path, bad: object) -> None:
    _hf_folder(tmp_path)
    tcfg_path = tmp_path / "tokenizer_config.json"
    tcfg = json.loads(tcfg_path.read_text())
    tcfg["chat_template"] = bad
    tcfg_path.write_text(json.dumps(tcfg))
    with pytest.raises(WeightLoadError, match="chat_template must be a string"):
        load_model(tmp_path)


def test_a_jinja_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    _hf_folder(tmp_path)
    (tmp_path / "chat_template.jinja").write_bytes(b"{{ \xff }}")
    with pytest.raises(WeightLoadError, match="not valid UTF-8"):
        load_model(tmp_path)


@pytest.mark.parametrize("fmt", ["safetensors", "custom", "binary", "gguf"])
def test_our_formats_keep_the_template(tmp_path: Path, fmt: str) -> None:
    path = save_weights(_model(), tmp_path / "m.weights", fmt, tokenizer=_bpe())  # type: ignore[arg-type]
    assert load_model_state(path).tokenizer.chat_template == TEMPLATE  # type: ignore[union-attr]
    byte = ByteTokenizer()
    byte.chat_template = OTHER
    path = save_weights(_model(), tmp_path / "b.weights", fmt, tokenizer=byte)  # type: ignore[arg-type]
    assert load_model_state(path).tokenizer.chat_template == OTHER  # type: ignore[union-attr]


def test_checkpoints_keep_the_template(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.mwb", _model(), _bpe())
    ck = load_checkpoint(path)
    assert ck.tokenizer is not None and ck.tokenizer.chat_template == TEMPLATE
