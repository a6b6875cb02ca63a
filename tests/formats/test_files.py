"""Which files are weights, which ones a load opens beside them, which ones a save writes.

The strongest check records every file Python opens during a load (an audit hook) and
requires each to be the path given or one of ``companion_files(path, format)``: a reader that
starts opening a new file beside the weights fails here until it lists that file too.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from workbench.formats import (
    WeightFormat,
    WeightLoadError,
    companion_files,
    is_weights_file,
    load_checkpoint,
    load_model,
    load_weights,
    save_checkpoint,
    save_weights,
    saved_files,
)
from workbench.formats.safetensors_io import write_safetensors
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer, Tokenizer, bpe_from_vocab


def _model() -> Transformer:
    return Transformer(ModelConfig.preset("tiny-llama"), seed=5)


def _bpe() -> Tokenizer:
    return bpe_from_vocab(
        [chr(0x100 + i) for i in range(256)] + ["<|endoftext|>"],
        [],
        [1] * 256 + [3],
        bos_id=256,
        eos_id=256,
    )


def _hf_folder(folder: Path) -> Path:
    """A Hugging Face style folder: weights without our metadata, config, tokenizer files."""
    path = save_weights(
        _model(), folder / "model.safetensors", "safetensors", hf_names=True, tokenizer=_bpe()
    )
    tensors = {k: v.clone() for k, v in load_weights(path).tensors.items()}
    write_safetensors(path, tensors)  # drop our metadata: the HF files describe the model
    (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    return path


def _sharded(folder: Path) -> Path:
    """``_hf_folder`` split into two shards with an index."""
    return shard_in_two(_hf_folder(folder))


def shard_in_two(single: Path) -> Path:
    """The SafeTensors file ``single`` replaced by two shards and an index; returns the index."""
    folder = single.parent
    tensors = {k: v.clone() for k, v in load_weights(single).tensors.items()}
    single.unlink()
    names = sorted(tensors)
    weight_map: dict[str, str] = {}
    for i, part in enumerate((names[::2], names[1::2])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        write_safetensors(folder / shard, {n: tensors[n] for n in part})
        weight_map.update(dict.fromkeys(part, shard))
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


# Each case builds files in a fresh folder and returns (path to load, format to pass).
CASES: dict[str, Callable[[Path], tuple[Path, WeightFormat | None]]] = {
    "binary": lambda d: (save_weights(_model(), d / "m.bin", "binary"), None),
    "binary-manifest": lambda d: (
        save_weights(_model(), d / "m.bin", "binary").with_name("m.bin.json"),
        None,
    ),
    "binary-forced-on-safetensors": lambda d: (
        save_weights(_model(), d / "m.st", "safetensors"),
        "binary",
    ),
    "safetensors-ours": lambda d: (save_weights(_model(), d / "m.st", "safetensors"), None),
    "hf-file": lambda d: (_hf_folder(d), None),
    "hf-folder": lambda d: (_hf_folder(d).parent, None),
    "hf-sharded-folder": lambda d: (_sharded(d).parent, None),
    "hf-index": lambda d: (_sharded(d), None),
    "gguf": lambda d: (
        save_weights(_model(), d / "m.gguf", "gguf", tokenizer=ByteTokenizer()),
        None,
    ),
    "custom": lambda d: (save_weights(_model(), d / "m.mwb", "custom"), None),
    "unrecognised-with-json-beside": lambda d: (_notes_with_json(d), None),
    "format-contradicts-bytes": lambda d: (save_weights(_model(), d / "m.bin", "binary"), "gguf"),
    "missing": lambda d: (d / "nothing.safetensors", None),
}


def _notes_with_json(folder: Path) -> Path:
    (folder / "notes").write_text("no weights here")
    (folder / "notes.json").write_text('{"not": "a manifest"}')
    return folder / "notes"


_recording: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    # "open" names a file opened by path; files opened beneath a folder's descriptor (by a bare
    # name and dir_fd) are announced by the opener with their full path.
    if (
        _recording is not None
        and event in ("open", "workbench.formats.open")
        and isinstance(args[0], str | bytes | os.PathLike)
    ):
        _recording.append(os.path.realpath(os.fsdecode(args[0])))


_hooked = False


def _opened_by(action: Callable[[], object]) -> set[str]:
    """Every file Python opened while ``action`` ran (it may raise ``WeightLoadError``)."""
    global _recording, _hooked
    if not _hooked:  # an audit hook cannot be removed, so one hook serves every call
        sys.addaudithook(_audit)
        _hooked = True
    _recording = []
    try:
        action()
    except WeightLoadError:
        pass
    finally:
        opened, _recording = set(_recording), None
    return opened


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_load_opens_only_the_path_and_its_companions(case: str, tmp_path: Path) -> None:
    path, fmt = CASES[case](tmp_path)
    listed = {os.path.realpath(p) for p in companion_files(path, fmt)}
    opened = _opened_by(lambda: load_model(path, fmt))
    inside = {
        p
        for p in opened
        if Path(p).is_relative_to(os.path.realpath(tmp_path)) and not os.path.isdir(p)
    }  # a folder is opened to open files beneath it: that reads no file
    unlisted = inside - listed - {os.path.realpath(path)}
    assert not unlisted, f"{case}: the load opened {sorted(unlisted)} beyond {sorted(listed)}"


def _names(path: Path, fmt: WeightFormat | None = None) -> list[str]:
    return sorted(p.name for p in companion_files(path, fmt))


def test_companions_by_format(tmp_path: Path) -> None:
    binary = tmp_path / "binary"
    data = save_weights(_model(), binary / "m.bin", "binary")
    assert _names(data) == ["m.bin.json"]
    assert _names(binary / "m.bin.json") == ["m.bin"]
    hf_file = _hf_folder(tmp_path / "hf")
    assert _names(hf_file) == ["config.json", "tokenizer.json", "tokenizer_config.json"]
    index = _sharded(tmp_path / "sharded")
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert _names(index) == sorted(
        ["config.json", "tokenizer.json", "tokenizer_config.json", *shards]
    )
    assert _names(index.parent) == sorted(
        ["config.json", "tokenizer.json", "tokenizer_config.json", index.name, *shards]
    )
    other = tmp_path / "other"
    gguf = save_weights(_model(), other / "m.gguf", "gguf", tokenizer=ByteTokenizer())
    custom = save_weights(_model(), other / "m.mwb", "custom")
    ours = save_weights(_model(), other / "m.st", "safetensors")
    (other / "config.json").write_text("{}")  # beside them, but only SafeTensors may read it
    (other / "m.st.json").write_text("{}")
    assert _names(gguf) == [] and _names(custom) == []
    assert _names(ours) == ["config.json"]
    # The format a load is given decides too: raw binary reads a manifest beside its data.
    assert _names(ours, "binary") == ["m.st.json"]


def test_companions_of_a_broken_index_are_not_guessed(tmp_path: Path) -> None:
    index = tmp_path / "model.safetensors.index.json"
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    index.write_text(json.dumps({"weight_map": {"w": "../outside.safetensors"}}))
    assert companion_files(index) == []  # the reader refuses this index before opening a shard
    with pytest.raises(WeightLoadError, match="not a plain file name"):
        load_weights(index)


def test_companions_of_a_missing_path_are_everything_a_reader_might_open(
    tmp_path: Path,
) -> None:
    for name in ("config.json", "tokenizer.json", "w.safetensors.json", "unrelated.txt"):
        (tmp_path / name).write_text("{}")
    got = sorted(p.name for p in companion_files(tmp_path / "w.safetensors"))
    assert got == ["config.json", "tokenizer.json", "w.safetensors.json"]


def test_a_dangling_link_is_listed(tmp_path: Path) -> None:
    data = save_weights(_model(), tmp_path / "m.st", "safetensors")
    (tmp_path / "config.json").symlink_to(tmp_path / "gone")
    assert companion_files(data) == [tmp_path / "config.json"]


def test_is_weights_file(tmp_path: Path) -> None:
    model = _model()
    weights = [
        save_weights(model, tmp_path / "m.st", "safetensors"),
        save_weights(model, tmp_path / "m.gguf", "gguf", tokenizer=ByteTokenizer()),
        save_weights(model, tmp_path / "m.mwb", "custom"),
        save_weights(model, tmp_path / "m.bin", "binary"),
        tmp_path / "m.bin.json",  # the manifest names its data, so it counts
        _hf_folder(tmp_path / "hf").parent,
    ]
    for path in weights:
        assert is_weights_file(path), path
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "w.pt").write_bytes(pickle.dumps({"w": 1}))
    others = [
        tmp_path / "notes.txt",
        tmp_path / "w.pt",
        tmp_path / "hf" / "config.json",
        tmp_path / "missing.safetensors",
        tmp_path / "hf" / "empty-folder",
    ]
    (tmp_path / "hf" / "empty-folder").mkdir()
    for path in others:
        assert not is_weights_file(path), path


@pytest.mark.parametrize(
    ("fmt", "hf_names"),
    [
        ("safetensors", False),
        ("safetensors", True),
        ("binary", False),
        ("gguf", False),
        ("custom", False),
    ],
)
def test_saved_files_are_what_a_save_writes(
    fmt: WeightFormat, hf_names: bool, tmp_path: Path
) -> None:
    path = tmp_path / "out" / "m.weights"
    save_weights(_model(), path, fmt, tokenizer=_bpe(), hf_names=hf_names)
    written = sorted(p.name for p in path.parent.iterdir())
    assert written == sorted(p.name for p in saved_files(path, fmt, hf_names=hf_names))
    assert saved_files(path, fmt, hf_names=hf_names)[0] == path


def test_checkpoint_loads_honour_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save_checkpoint(tmp_path / "c.mwb", _model(), None)
    capsys.readouterr()
    load_weights(path, progress=False)
    load_checkpoint(path, progress=False)
    assert "loading c.mwb" not in capsys.readouterr().err
    load_weights(path, progress=True)
    assert "loading c.mwb" in capsys.readouterr().err
    ck = load_checkpoint(path, progress=True)
    assert "loading c.mwb" in capsys.readouterr().err
    assert torch.equal(ck.state_dict["tok_emb.weight"], _model().state_dict()["tok_emb.weight"])
