"""Atomic writes: saved files get the permissions open() gives (the umask applies), and a
folder where a file should go is refused with a message that says what to give instead."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from workbench.formats import WeightSaveError, save_checkpoint, save_weights, saved_files
from workbench.formats.atomic import atomic_writer
from workbench.formats.folder import Folder
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import bpe_from_vocab

UMASKS = [0o022, 0o077, 0o002, 0o000, 0o027]


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _plain_open_mode(folder: Path) -> int:
    """What ``open(..., "w")`` gives a new file under the current umask: the reference."""
    probe = folder / "probe.txt"
    with open(probe, "w") as f:
        f.write("x")
    mode = _mode(probe)
    probe.unlink()
    return mode


def _model_and_tokenizer() -> tuple[Transformer, object]:
    tokens = [chr(0x100 + i) for i in range(256)] + ["<|endoftext|>"]
    tok = bpe_from_vocab(tokens, [], [1] * 256 + [3], bos_id=256, eos_id=256)
    return Transformer(ModelConfig.preset("tiny-llama", vocab_size=257), seed=0), tok


@pytest.mark.parametrize("mask", UMASKS, ids=[oct(m) for m in UMASKS])
def test_every_writer_respects_the_umask(tmp_path: Path, umask: None, mask: int) -> None:
    model, tok = _model_and_tokenizer()
    os.umask(mask)
    expected = _plain_open_mode(tmp_path)
    assert expected == 0o666 & ~mask
    written: list[Path] = []
    for fmt, hf_names in (("safetensors", True), ("gguf", False), ("binary", False)):
        out = tmp_path / fmt
        path = save_weights(model, out / f"w.{fmt}", fmt, tokenizer=tok, hf_names=hf_names)  # type: ignore[arg-type]
        written += [p for p in saved_files(path, fmt, hf_names=hf_names) if p.exists()]  # type: ignore[arg-type]
    written.append(save_checkpoint(tmp_path / "ck" / "c.mwb", model, tok))  # type: ignore[arg-type]
    with Folder(tmp_path) as root:  # through a held folder's descriptor too
        save_weights(model, root.path("held/w.st"), "safetensors")
    written.append(tmp_path / "held" / "w.st")
    assert len(written) >= 9
    assert {p.name: oct(_mode(p)) for p in written} == {p.name: oct(expected) for p in written}


def test_replacing_a_file_gives_the_new_file_the_umask(tmp_path: Path, umask: None) -> None:
    target = tmp_path / "w.bin"
    target.write_bytes(b"old")
    target.chmod(0o600)
    os.umask(0o022)
    with atomic_writer(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and _mode(target) == 0o644


@pytest.mark.parametrize("fmt", ["safetensors", "gguf", "binary", "custom"])
def test_a_folder_is_refused_with_the_fix(tmp_path: Path, fmt: str) -> None:
    model, tok = _model_and_tokenizer()
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    example = {"safetensors": "model.safetensors", "gguf": "model.gguf", "binary": "model.bin"}
    for given in (folder, Path(f"{folder}/")):
        with pytest.raises(WeightSaveError) as info:
            save_weights(model, given, fmt, tokenizer=tok)  # type: ignore[arg-type]
        message = str(info.value)
        assert message.startswith(f"{folder} is a folder: give a file name such as {folder}/")
        assert message.endswith(example.get(fmt, "checkpoint.mwb"))
        assert ".tmp" not in message
    with pytest.raises(WeightSaveError, match="is a folder: give a file name such as"):
        save_checkpoint(folder, model, tok)  # type: ignore[arg-type]
    with Folder(tmp_path) as root, pytest.raises(WeightSaveError, match="out is a folder"):
        save_weights(model, root.path("out"), fmt, tokenizer=tok)  # type: ignore[arg-type]
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_folder_made_during_the_write_is_refused_by_name(tmp_path: Path) -> None:
    target = tmp_path / "w.bin"
    with pytest.raises(IsADirectoryError) as info, atomic_writer(target) as f:
        f.write(b"weights")
        target.mkdir()
        (target / "inside").write_text("x")  # a non-empty folder: rename cannot replace it
    assert str(info.value) == f"[Errno 21] {target} is a folder: give a file name inside it"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.bin"]  # no temp file left
    with pytest.raises(IsADirectoryError, match="is a folder: give a file name inside it"):
        atomic_writer(tmp_path / "w.bin").__enter__()


def test_a_link_to_a_folder_is_replaced_not_refused(tmp_path: Path) -> None:
    model, tok = _model_and_tokenizer()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "w.safetensors").symlink_to(tmp_path / "elsewhere")
    path = save_weights(model, tmp_path / "w.safetensors", "safetensors", tokenizer=tok)  # type: ignore[arg-type]
    assert path.is_file() and not path.is_symlink()
    assert list((tmp_path / "elsewhere").iterdir()) == []
