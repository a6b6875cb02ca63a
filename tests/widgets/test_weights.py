"""Weights panel: save in each format, find files, load them back, checkpoint, summary."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tqdm import tqdm as tqdm_console
from tqdm.notebook import tqdm as tqdm_notebook
from workbench.widgets import WeightsPanel
from workbench.widgets.weights import find_weight_files

from workbench.formats import WeightSaveError
from workbench.formats._common import progress_bar
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


def test_load_in_the_chosen_float_type(learner: OnlineLearner, tmp_path: Path) -> None:
    panel = WeightsPanel(learner, folder=tmp_path)
    assert list(panel.load_dtype.options) == ["float32", "bfloat16", "float16"]
    path = learner.save_weights(tmp_path / "w.safetensors", "safetensors")
    panel.path.value = str(path)
    panel.load_dtype.value = "bfloat16"
    panel.load.click()
    assert panel.wait(), panel.status.text
    assert panel.status.kind == "ok", panel.status.text
    assert learner.describe()["dtype"] == "bfloat16"
    assert "<td>bfloat16</td>" in panel.summary.value
    panel.load_dtype.value = "float32"
    panel.load.click()
    assert panel.wait(), panel.status.text
    assert learner.describe()["dtype"] == "float32"


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


def test_saving_disables_the_buttons_and_shows_a_moving_bar(
    learner: OnlineLearner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    panel = WeightsPanel(learner, folder=tmp_path)
    release, started = threading.Event(), threading.Event()
    real_save = learner.save_weights

    def slow_save(path: Path, format: str = "custom", dtype: str | None = None) -> Path:
        started.set()
        assert release.wait(30)
        return real_save(path, format=format, dtype=dtype)

    monkeypatch.setattr(learner, "save_weights", slow_save)
    panel.save_path.value = str(tmp_path / "out" / "model.safetensors")
    panel.save.click()
    assert started.wait(30)
    bar = panel.save_progress.bar
    assert panel.save.disabled and panel.checkpoint.disabled and panel.load.disabled
    assert bar.layout.visibility == "visible" and "wb-indeterminate" in bar._dom_classes
    assert panel.status.kind == "busy" and "wb-spinner" in panel.status.value
    release.set()
    assert panel.wait(), panel.status.text
    assert panel.status.kind == "ok" and "saved safetensors" in panel.status.text
    assert not (panel.save.disabled or panel.checkpoint.disabled or panel.load.disabled)
    assert bar.layout.visibility == "hidden" and "saving took" in panel.save_progress.label.value


@pytest.mark.parametrize("fmt", ["safetensors", "custom"])
def test_a_failed_save_says_so_and_gives_the_buttons_back(
    learner: OnlineLearner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    panel = WeightsPanel(learner, folder=tmp_path)
    folder = tmp_path / "exports"
    folder.mkdir()
    panel.save_format.value = fmt
    panel.save_path.value = str(folder)  # a folder: the formats layer's message, shown as is
    panel.save.click()
    assert panel.wait()
    assert panel.status.kind == "error"
    assert panel.status.text.startswith(f"not saved: {folder} is a folder: "), panel.status.text
    for noise in ("Traceback", "Error", "[Errno", ".tmp"):  # no type, errno or temp-file name
        assert noise not in panel.status.text, panel.status.text
    assert not panel.save.disabled and list(folder.iterdir()) == []

    def full_disk(path: Path, format: str = "custom", dtype: str | None = None) -> Path:
        raise WeightSaveError(f"cannot write {path}: no space left on device")

    monkeypatch.setattr(learner, "save_weights", full_disk)
    panel.save_path.value = str(tmp_path / "model.safetensors")
    panel.save.click()
    assert panel.wait()
    assert panel.status.kind == "error"
    assert panel.status.text == (
        f"not saved: cannot write {tmp_path / 'model.safetensors'}: no space left on device"
    )
    assert "Traceback" not in panel.status.value and panel.last_traceback is not None
    assert not (panel.save.disabled or panel.checkpoint.disabled or panel.load.disabled)
    assert panel.save_progress.bar.layout.visibility == "hidden"


@pytest.mark.parametrize(
    ("kind", "shown"),
    [("formats", "of 200 MB"), ("notebook", "of 200 MB"), ("gguf", "of 10 tensors")],
)
def test_a_big_loads_tqdm_bar_shows_in_the_panel_not_in_the_cell(
    learner: OnlineLearner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    shown: str,
) -> None:
    # The formats layer draws tqdm bars for a big load on the learner's worker thread; in a
    # notebook they printed into the learner's cell (a pink stderr box). The panel mirrors them.
    total = 200_000_000
    file = tmp_path / "big.gguf"
    file.write_bytes(b"GGUF")

    def big_load(path: Path, format: str | None = None, dtype: str | None = None) -> dict[str, Any]:
        desc = f"loading {Path(path).name}"

        def read() -> None:
            if kind == "gguf":  # as workbench.formats.gguf decodes tensors: a console bar
                for _ in tqdm_console(range(10), desc="GGUF", unit="tensor", delay=1.0):
                    time.sleep(0.2)
                return
            # The formats layer's bar (tqdm.auto: the console one here), or tqdm's notebook bar
            # as tqdm.auto picks it in a kernel, with the same settings.
            with (
                progress_bar(total, desc, None)
                if kind == "formats"
                else tqdm_notebook(total=total, desc=desc, unit="B", unit_scale=True, delay=1.0)
            ) as bar:
                for _ in range(10):
                    time.sleep(0.2)  # 2 s: past tqdm's 1 s delay, it would have drawn
                    bar.update(total // 10)

        worker = threading.Thread(target=read)  # like the learner's worker thread
        worker.start()
        worker.join()
        return {"format": "gguf", "parameters": 1}

    monkeypatch.setattr(learner, "load_weights", big_load)
    seen: list[tuple[int, str]] = []
    panel = WeightsPanel(learner, folder=tmp_path)
    panel.progress.observe(lambda c: seen.append((c["new"], panel.clock.value)), "value")
    panel.path.value = str(file)
    panel.load.click()
    assert panel.wait(), panel.status.text
    assert panel.status.kind == "ok", panel.status.text
    partial = [(v, label) for v, label in seen if 0 < v < panel.progress.max]
    assert partial, seen  # the bar showed the bytes read, not only "busy"
    assert any(label.endswith(shown) for _, label in partial), partial
    assert [v for v, _ in partial] == sorted(v for v, _ in partial)
    captured = capsys.readouterr()
    drawn = captured.err + captured.out
    assert "big.gguf" not in drawn and "GGUF" not in drawn  # tqdm drew nothing itself
    assert panel.progress.layout.visibility == "hidden" and "took" in panel.clock.value
