"""Weights: load a file into the learner, see what model is running, save or checkpoint it.

Loading and saving go through the learner's worker (it owns the training weights), so they run
on the panel's task thread while a widget progress bar shows them alive (``_progress``): moving
stripes while the amount is unknown, bytes read of the file's size once the load reports them.
Load, Save and Checkpoint are disabled while one runs and come back with a message saying what
happened, success or failure. The format is detected from the file's bytes unless the person
picks one; the folder scan only lists candidate files by name, it decides nothing.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import ipywidgets as w

from workbench.formats import WEIGHT_FORMATS
from workbench.learner import Learner
from workbench.learner.config import LOAD_DTYPES

from ._common import UI_LOCK, format_bytes, format_count, guarded, row, short_error
from ._controls import button, labelled
from ._progress import ProgressRow, is_load_bar
from ._runtime import RuntimeMembers

__all__ = ["PanelError", "WeightsPanel", "find_weight_files", "model_summary"]

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".mwb")
SUFFIX_OF = {"safetensors": ".safetensors", "gguf": ".gguf", "binary": ".bin", "custom": ".mwb"}
DTYPES = ("as trained", "float32", "float16", "bfloat16")
MAX_FILES = 500
_LABEL_WIDTH = "60px"  # of every control's description
_STYLE = {"description_width": _LABEL_WIDTH}
T = TypeVar("T")


def _path_box(description: str, **kwargs: Any) -> w.Text:
    """A labelled text box that takes the row's free width (folders and file paths)."""
    return w.Text(
        description=description,
        style=_STYLE,
        layout=w.Layout(flex="1 1 auto", min_width="0"),
        **kwargs,
    )


def _choice(description: str, options: list[Any], value: str, **kwargs: Any) -> w.Dropdown:
    """A labelled 200 px dropdown (formats, dtypes)."""
    return labelled(
        w.Dropdown, description, _LABEL_WIDTH, "200px", options=options, value=value, **kwargs
    )


class PanelError(ValueError):
    """A load or save that failed, said in one line (the cause's traceback is logged)."""


def find_weight_files(folder: str | Path, max_depth: int = 2) -> list[Path]:
    """Files under ``folder`` whose names look like weights, newest first (at most 500).

    Names only pick candidates for the dropdown; the loader detects the format from the bytes.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    found: list[Path] = []
    level = [root]
    for _ in range(max_depth + 1):
        nxt: list[Path] = []
        for d in level:
            try:
                entries = list(d.iterdir())
            except OSError:
                continue  # an unreadable subfolder should not hide the rest
            for p in entries:
                if p.is_dir() and not p.name.startswith("."):
                    nxt.append(p)
                elif p.suffix in WEIGHT_SUFFIXES and p.is_file():
                    found.append(p)
        level = nxt
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return found[:MAX_FILES]


def model_summary(info: dict[str, Any]) -> str:
    """``learner.describe()`` as a small HTML table: architecture, parameters, dtype, tokenizer.

    >>> "1.2M" in model_summary({"family": "llama", "parameters": 1_234_567, "config": {}})
    True
    """
    cfg = info.get("config") or {}
    shape = " · ".join(
        f"{k.removeprefix('n_')} {cfg[k]}"
        for k in ("n_layer", "n_head", "n_embd", "n_ctx")
        if k in cfg
    )
    rows = [
        ("architecture", f"{info.get('family', '?')}" + (f" ({shape})" if shape else "")),
        ("parameters", format_count(info.get("parameters", 0))),
        ("dtype", info.get("dtype", "?")),
        ("device", info.get("device", "?")),
        ("tokenizer", f"{info.get('tokenizer', '?')}"),
        ("vocabulary", format_count(info.get("vocab_size", 0))),
        ("weights version", info.get("version", "?")),
    ]
    cells = "".join(
        f"<tr><td style='color:#555;padding-right:1em'>{k}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table style='font-size:0.9em'>{cells}</table>"


class WeightsPanel(RuntimeMembers, w.VBox):
    """Load (path or folder scan, format, progress), model summary, Save / Checkpoint.

    Parameters
    ----------
    learner : Learner
        Uses ``load_weights``, ``save_weights``, ``checkpoint``, ``list_checkpoints``,
        ``describe`` and ``session_dir``.
    folder : str or Path, optional
        Where to look for weight files; defaults to the learner's session folder.
    """

    wait_timeout = 120.0  # loads and saves of big files take a while

    def __init__(self, learner: Learner, folder: str | Path | None = None) -> None:
        self._connect(learner, "weights")
        self.last_load: dict[str, Any] | None = None
        self.last_saved: Path | None = None
        session = learner.session_dir

        self.folder = _path_box("folder", value=str(folder or session))
        self.scan = w.Button(
            description="Scan", icon="search", layout=w.Layout(width="80px", flex="0 0 auto")
        )
        self.files = w.Dropdown(
            options=[("(scan a folder)", "")],
            value="",
            description="files",
            style=_STYLE,
            layout=w.Layout(width="auto"),
        )
        self.path = _path_box("path", placeholder="path to a weights file")
        self.format = _choice("format", ["auto", *WEIGHT_FORMATS], "auto")
        # The training copy's float type: float32 trains best; half precision halves memory.
        self.load_dtype = _choice(
            "dtype",
            list(LOAD_DTYPES),
            "float32",
            tooltip="float type of the loaded model (float32 trains best; bf16/f16 halve memory)",
        )
        self.load = button("Load", "upload", "90px", button_style="primary")
        self.load_progress = ProgressRow()
        self.progress, self.clock = self.load_progress.bar, self.load_progress.label
        self.summary = w.HTML()
        self.summary.add_class("wb-compact")

        self.save_path = _path_box("save to", value=str(session / "exports" / "model.safetensors"))
        self.save_format = _choice("format", list(WEIGHT_FORMATS), "safetensors")
        self.dtype = _choice("dtype", list(DTYPES), "as trained")
        self.save = button("Save", "download", "90px")
        self.checkpoint = button(
            "Checkpoint",
            "bookmark",
            "120px",
            tooltip="Write a full checkpoint into the session folder",
        )
        self.save_progress = ProgressRow()
        self.checkpoints = w.HTML()
        self.checkpoints.add_class("wb-compact")

        self.scan.on_click(self._on_scan)
        self.files.observe(self._on_file, "value")
        self.load.on_click(self._on_load)
        self.save_format.observe(self._on_save_format, "value")
        self.save.on_click(self._on_save)
        self.checkpoint.on_click(self._on_checkpoint)

        self._lay_out(
            "Weights",
            [
                w.HTML("<b>Load</b>"),
                row(self.folder, self.scan, wrap=False),
                self.files,
                row(self.path, wrap=False),
                row(self.format, self.load_dtype, self.load, self.progress, self.clock),
                w.HTML("<b>Model</b>"),
                self.summary,
                w.HTML("<b>Save</b>"),
                row(self.save_path, wrap=False),
                row(self.save_format, self.dtype, self.save, self.checkpoint),
                row(self.save_progress.bar, self.save_progress.label),
                self.checkpoints,
                self.status,
            ],
        )
        self.refresh()

    # ------------------------------------------------------------------ load
    @guarded
    def _on_scan(self, _button: Any = None) -> None:
        root = Path(self.folder.value).expanduser()
        found = find_weight_files(root)
        if not found:
            self.files.options = [("(no weight files here)", "")]
            self.status.show(f"no {', '.join(WEIGHT_SUFFIXES)} files under {root}", "info")
            return
        self.files.options = [("(choose a file)", ""), *((_label(p, root), str(p)) for p in found)]
        self.status.show(f"found {len(found)} weight file(s)", "ok")

    @guarded
    def _on_file(self, change: dict[str, Any]) -> None:
        if change["new"]:
            self.path.value = change["new"]

    @guarded
    def _on_load(self, _button: Any = None) -> None:
        path = self._typed_path(self.path, "enter a path or pick a file from the folder scan")
        if path is None:
            return
        if not path.is_file():
            self.status.error(f"no such file: {path}")
            return
        fmt = None if self.format.value == "auto" else self.format.value
        dtype = self.load_dtype.value

        def load() -> dict[str, Any]:
            # The formats layer's tqdm bars of a big load, shown here instead of in a cell.
            with self.load_progress.running("loading", follow=is_load_bar):
                return self.learner.load_weights(path, format=fmt, dtype=dtype)

        def done(info: dict[str, Any]) -> None:
            self.last_load = info
            changed = (
                "; new architecture (optimizer reset)" if info.get("architecture_changed") else ""
            )
            self.status.show(
                f"loaded {info.get('format', '?')} from {path.name}: "
                f"{format_count(info.get('parameters', 0))} parameters{changed}",
                "ok",
            )
            self.refresh()

        self._run_busy(f"loading {path.name}", load, "not loaded", done, "load")

    def _typed_path(self, box: w.Text, missing: str) -> Path | None:
        """The path typed in ``box`` (``~`` expanded); None, saying ``missing``, when empty."""
        raw = box.value.strip()
        if not raw:
            self.status.error(missing)
            return None
        return Path(raw).expanduser()

    def _set_busy(self, busy: bool) -> None:
        """Load, Save and Checkpoint off while one of them runs (they queue on one worker)."""
        with UI_LOCK:
            self.load.disabled = self.save.disabled = self.checkpoint.disabled = busy

    def _run_busy(
        self, doing: str, work: Callable[[], T], failed: str, done: Callable[[T], None], what: str
    ) -> None:
        """Run ``work`` on the task thread with Load, Save and Checkpoint off, saying ``doing``
        meanwhile; a failure shows as ``failed: <why>``, a result goes to ``done``."""
        self._set_busy(True)
        self.status.show(f"{doing}…", "busy")

        def run() -> T:
            try:
                return work()
            except Exception as e:
                raise PanelError(f"{failed}: {short_error(e)}") from e
            finally:
                self._set_busy(False)

        self.runtime.submit(run, done, what)

    # ------------------------------------------------------------------ save
    @guarded
    def _on_save_format(self, change: dict[str, Any]) -> None:
        current = Path(self.save_path.value)
        if current.suffix in WEIGHT_SUFFIXES:
            self.save_path.value = str(current.with_suffix(SUFFIX_OF[change["new"]]))

    @guarded
    def _on_save(self, _button: Any = None) -> None:
        path = self._typed_path(self.save_path, "enter where to save")
        if path is None:
            return
        fmt = self.save_format.value
        dtype = None if self.dtype.value == "as trained" else self.dtype.value

        def save() -> Path:
            with self.save_progress.running("saving"):
                path.parent.mkdir(parents=True, exist_ok=True)
                return self.learner.save_weights(path, format=fmt, dtype=dtype)

        def done(saved: Path) -> None:
            self.last_saved = saved
            size = saved.stat().st_size if saved.is_file() else 0
            self.status.show(f"saved {fmt} ({format_bytes(size)}) to {saved}", "ok")

        self._run_busy(f"saving {fmt} to {path.name}", save, "not saved", done, "save")

    @guarded
    def _on_checkpoint(self, _button: Any = None) -> None:
        def write() -> Path:
            with self.save_progress.running("writing a checkpoint"):
                return self.learner.checkpoint()

        def done(path: Path) -> None:
            self.last_saved = path
            self.status.show(f"checkpoint written: {path.name}", "ok")
            self.refresh()

        self._run_busy("writing a checkpoint", write, "no checkpoint written", done, "checkpoint")

    # ------------------------------------------------------------------ refresh
    @guarded
    def refresh(self) -> None:
        """Show the running model and the session's checkpoints."""
        self.summary.value = model_summary(self.learner.describe())
        ckpts = self.learner.list_checkpoints()[:5]
        if not ckpts:
            self.checkpoints.value = (
                "<span style='color:#555;font-size:0.9em'>no checkpoints yet</span>"
            )
            return
        items = "".join(
            f"<li><code>{html.escape(Path(c['path']).name)}</code> · {c['updates']} updates · "
            f"{format_bytes(c['bytes'])} · "
            f"{dt.datetime.fromtimestamp(c['modified']).strftime('%H:%M:%S')}</li>"
            for c in ckpts
        )
        self.checkpoints.value = f"<div style='font-size:0.9em'>checkpoints (newest first):<ul style='margin:0'>{items}</ul></div>"


def _label(path: Path, root: Path) -> str:
    try:
        name = str(path.relative_to(root))
    except ValueError:
        name = path.name
    return f"{name}  ({format_bytes(path.stat().st_size)})"
