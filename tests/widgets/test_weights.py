"""Weights panel: save in each format, find files, load them back, checkpoint, summary."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from workbench.widgets import WeightsPanel
from workbench.widgets.weights import find_weight_files

from workbench.learner import OnlineLearner


def test_summary_shows_the_running_model(learner: OnlineLearner) -> None:
    panel = WeightsPanel(learner)
    text = panel.summary.value
    for expected in ("llama", "1.6M", "float32", "ByteTokenizer", "layer 4"):
        assert expected in text
    assert list(panel.format.options) == ["auto", "safetensors", "gguf", "binary", "custom"]


@pytest.mark.parametrize(
    ("fmt", "dtype"), [("safetensors", "float16"), ("custom", "as trained"), ("binary", "bfloat16")]
)
def test_save_then_scan_then_load_round_trips(
    learner: OnlineLearner, tmp_path: Path, fmt: str, dtype: str
) -> None:
    panel = WeightsPanel(learner, folder=tmp_path / "out")
    panel.save_format.value = fmt
    suffix = {"safetensors": ".safetensors", "custom": ".mwb", "binary": ".bin"}[fmt]
    assert Path(panel.save_path.value).suffix == suffix
    panel.save_path.value = str(tmp_path / "out" / Path(panel.save_path.value).name)
    panel.dtype.value = dtype
    panel.save.click()
    assert panel.wait(), panel.status.text
    assert panel.status.kind == "ok", panel.status.text
    assert panel.last_saved is not None and panel.last_saved.is_file()
    assert re.search(rf"saved {fmt} \(\d+(\.\d)? (kB|MB)\) to ", panel.status.text)

    panel.scan.click()
    paths = [v for _, v in panel.files.options if v]
    assert paths == [str(panel.last_saved)]
    panel.files.value = paths[0]
    assert panel.path.value == paths[0]
    panel.load.click()
    assert panel.wait(), panel.status.text
    assert panel.status.kind == "ok", panel.status.text
    assert panel.last_load is not None and panel.last_load["format"] == fmt
    assert panel.progress.layout.visibility == "hidden" and "took" in panel.clock.value
    assert not panel.load.disabled
    info = learner.describe()
    assert info["version"] == 0  # the file's weights, not yet updated
    assert f"<td>{info['dtype']}</td>" in panel.summary.value
    assert "<td>0</td>" in panel.summary.value


def test_checkpoint_is_listed(learner: OnlineLearner) -> None:
    panel = WeightsPanel(learner)
    assert "no checkpoints yet" in panel.checkpoints.value
    panel.checkpoint.click()
    assert panel.wait()
    assert panel.status.kind == "ok" and "ckpt-" in panel.checkpoints.value
    assert learner.list_checkpoints()
    # The size in bytes with its unit ("6.6 MB"), not a count with a B glued on ("6.6MB").
    assert re.search(r" · \d+(\.\d)? (B|kB|MB|GB) · ", panel.checkpoints.value), (
        panel.checkpoints.value
    )


def test_load_errors_are_shown_in_the_panel(learner: OnlineLearner, tmp_path: Path) -> None:
    panel = WeightsPanel(learner, folder=tmp_path)
    panel.load.click()
    assert panel.status.kind == "error" and "enter a path" in panel.status.text
    panel.path.value = str(tmp_path / "missing.safetensors")
    panel.load.click()
    assert panel.status.kind == "error" and "no such file" in panel.status.text

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    panel.path.value = str(junk)
    panel.load.click()
    assert panel.wait()
    assert panel.status.kind == "error" and "Traceback" not in panel.status.value
    assert not panel.load.disabled
    assert learner.get_stats()["state"] == "idle"  # a bad file does not break the learner

    panel.folder.value = str(tmp_path / "nope")
    panel.scan.click()
    assert panel.status.kind == "error" and "no such folder" in panel.status.text


def test_find_weight_files_goes_two_levels_deep(tmp_path: Path) -> None:
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    for rel in ("x.gguf", "a/y.safetensors", "a/b/z.bin", "a/b/c/too-deep.mwb", "a/notes.txt"):
        (tmp_path / rel).write_bytes(b"1")
    names = sorted(p.name for p in find_weight_files(tmp_path))
    assert names == ["x.gguf", "y.safetensors", "z.bin"]
