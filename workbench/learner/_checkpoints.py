"""The session's checkpoints: ``<session>/checkpoints/ckpt-<updates>.mwb`` in our format.

Each is written atomically by ``workbench.formats.save_checkpoint``; older ones are pruned only
after the new one is on disk, and restoring walks back from the newest until one verifies, so a
crash at any moment leaves a verified checkpoint once the first has been written.
"""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.learner._training import Trainer

_NAME = re.compile(r"^ckpt-(\d{8,})\.mwb$")


def folder(session_dir: Path) -> Path:
    return session_dir / "checkpoints"


def _ordered(session_dir: Path) -> list[tuple[int, Path]]:
    """(updates, path) of the session's checkpoint files, newest first."""
    d = folder(session_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def write_to(path: Path, trainer: Trainer, learner_state: dict[str, Any]) -> Path:
    from workbench.formats import save_checkpoint

    save_checkpoint(
        path,
        trainer.model,
        trainer.tokenizer,
        optimizer=trainer.optimizer,
        learner_state=learner_state,
    )
    return path


def write(session_dir: Path, trainer: Trainer, learner_state: dict[str, Any], keep: int) -> Path:
    path = folder(session_dir) / f"ckpt-{trainer.updates:08d}.mwb"
    write_to(path, trainer, learner_state)
    for _, old in _ordered(session_dir)[keep:]:
        old.unlink(missing_ok=True)
    return path


def drop_newer_than(session_dir: Path, updates: int) -> None:
    """Delete checkpoints of updates that were undone, so a resume cannot bring them back."""
    for n, path in _ordered(session_dir):
        if n > updates:
            path.unlink(missing_ok=True)


def latest_valid(session_dir: Path) -> tuple[Any, Path] | None:
    """The newest checkpoint that loads and verifies, skipping (and reporting) broken ones."""
    d = folder(session_dir)
    if not d.is_dir():
        return None
    from workbench.formats import WeightLoadError, load_checkpoint

    for tmp in d.glob(".ckpt-*.tmp"):  # temp files of writes that a crash interrupted
        tmp.unlink(missing_ok=True)
    for _, path in _ordered(session_dir):
        try:
            return load_checkpoint(path, verify=True), path
        except WeightLoadError as e:
            warnings.warn(f"skipping checkpoint {path.name}: {e}", stacklevel=3)
    return None


def list_checkpoints(session_dir: Path) -> list[dict[str, Any]]:
    out = []
    for updates, path in _ordered(session_dir):
        st = path.stat()
        out.append(
            {"path": str(path), "updates": updates, "bytes": st.st_size, "modified": st.st_mtime}
        )
    return out


def rng_to_json(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def rng_from_json(data: list[Any]) -> tuple[Any, ...]:
    version, internal, gauss = data
    return (int(version), tuple(int(x) for x in internal), gauss)
