"""The path guard: every file path an agent sends must resolve inside one allowed folder.

One pure function decides, from the path text and the file system as it is now: the path is
taken relative to the root (absolute paths are judged as they are), symlinks and ``..`` are
resolved, and the result must lie inside the resolved root, compared component by component
(so ``/data/root-other`` is not inside ``/data/root``). Nothing here writes a file; the only
reads are those :func:`workbench.formats.companion_files` makes to list what a load opens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from workbench.formats import WeightFormat, companion_files

__all__ = [
    "MAX_PATH_CHARS",
    "PathRefused",
    "resolve_for_read",
    "resolve_for_write",
    "resolve_inside",
]

MAX_PATH_CHARS = 4096  # PATH_MAX on Linux; longer text is no path, only a payload


class PathRefused(PermissionError):
    """A file path an agent gave is not allowed; the message says why and what is allowed."""


def resolve_inside(root: Path, user_path: str) -> Path:
    """Resolve ``user_path`` (relative to ``root``) and refuse it unless it stays inside ``root``.

    Parameters
    ----------
    root
        The allowed folder. It is resolved too, so a root reached through a symlink works.
    user_path
        The path as the agent wrote it: relative (taken from ``root``) or absolute.

    Returns
    -------
    Path
        The resolved, absolute path: use this one, never the text, so that what was checked is
        what gets opened.

    Raises
    ------
    PathRefused
        Empty, too long, containing NUL, a symlink loop, or resolving outside ``root``.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> resolve_inside(root, "sub/../w.safetensors") == root.resolve() / "w.safetensors"
    True
    >>> resolve_inside(root, "../elsewhere")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    workbench.mcp.paths.PathRefused: file_path '../elsewhere' resolves outside the allowed folder ...
    """
    if not isinstance(user_path, str):
        raise PathRefused(f"file_path must be a string, got {type(user_path).__name__}")
    if not user_path:
        raise PathRefused("file_path is empty: give a file name inside the allowed folder")
    if "\x00" in user_path:
        raise PathRefused("file_path contains a NUL byte")
    if len(user_path) > MAX_PATH_CHARS:
        raise PathRefused(
            f"file_path has {len(user_path):,} characters; the limit is {MAX_PATH_CHARS}"
        )
    base = Path(os.path.realpath(root))
    try:
        # realpath resolves each symlink before applying a later "..", as the kernel does;
        # strict=False because a save target does not exist yet.
        resolved = Path(os.path.realpath(base / user_path, strict=False))
    except (OSError, RuntimeError, ValueError) as e:  # symlink loops, names the OS refuses
        raise PathRefused(f"file_path {user_path!r} cannot be resolved: {e}") from None
    if not resolved.is_relative_to(base):
        raise PathRefused(
            f"file_path {user_path!r} resolves outside the allowed folder {base}; "
            "give a path inside it (relative paths are taken from it)"
        )
    return resolved


def resolve_for_write(root: Path, user_path: str, protected: Sequence[Path] = ()) -> Path:
    """Like :func:`resolve_inside`, for a file about to be written.

    The target must be a file name below ``root`` (not ``root`` itself, not an existing
    folder), and outside every ``protected`` folder (the learner's session: its example store
    and checkpoints are its own state, never an agent's output).

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> resolve_for_write(root, "out/w.mwb") == root.resolve() / "out" / "w.mwb"
    True
    >>> resolve_for_write(root, ".")
    Traceback (most recent call last):
    ...
    workbench.mcp.paths.PathRefused: file_path '.' is the allowed folder itself; give a file name inside it
    """
    resolved = resolve_inside(root, user_path)
    base = Path(os.path.realpath(root))
    if resolved == base:
        raise PathRefused(
            f"file_path {user_path!r} is the allowed folder itself; give a file name inside it"
        )
    if resolved.is_dir():
        raise PathRefused(f"file_path {user_path!r} is an existing folder; give a file name")
    for folder in protected:
        guarded = Path(os.path.realpath(folder))
        if resolved.is_relative_to(guarded):
            raise PathRefused(
                f"file_path {user_path!r} is inside the learner's session folder {guarded}, "
                "which holds its example store and checkpoints; save somewhere else"
            )
    return resolved


def resolve_for_read(root: Path, user_path: str, format: WeightFormat | None = None) -> Path:
    """Like :func:`resolve_inside`, for weights about to be read, companions included.

    Every file the readers open beside the one given (:func:`workbench.formats.companion_files`:
    a raw-binary manifest, the index and shards of a sharded folder, ``config.json`` and the
    tokenizer files) must resolve inside ``root`` too, or a symlink beside an allowed file
    would read a file outside it. ``format`` is the one the load will be given.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> resolve_for_read(root, "w.safetensors") == root.resolve() / "w.safetensors"
    True
    """
    resolved = resolve_inside(root, user_path)
    base = Path(os.path.realpath(root))
    try:
        entries = companion_files(resolved, format)
    except OSError as e:
        raise PathRefused(f"file_path {user_path!r}: cannot list what it brings: {e}") from None
    for entry in entries:
        if not Path(os.path.realpath(entry)).is_relative_to(base):
            raise PathRefused(
                f"file_path {user_path!r} would read {entry.name}, a link that leads outside "
                f"the allowed folder {base}"
            )
    return resolved
