"""The path guard: every file path an agent sends names a file beneath one folder held open.

The root is opened once (:class:`Root`) and kept open; a path is walked beneath that descriptor
one component at a time with ``O_NOFOLLOW`` (:class:`workbench.formats.folder.Folder`): ``..``
never climbs above the root, a link that stays inside is followed by the walk itself, and one
that leads out is refused. What the learner is then handed is not the path's text but a
descriptor path beneath the root (``/proc/self/fd/N/<path>``, :meth:`Root.path`), which
``workbench.formats`` walks again beneath the same descriptor when it reads or writes (and
writes atomically there). So there is no check-then-open race: whatever else writes in the root
meanwhile (swapping a folder for a link out, say) makes a load or save fail, never reach a file
outside.

Nothing here writes a file; the only reads are those
:func:`workbench.formats.companion_files` makes to list what a load opens.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from workbench.formats import WeightFormat, companion_files
from workbench.formats.folder import Folder
from workbench.formats.opener import DESCRIPTOR_DIR, LeavesFolder

__all__ = [
    "MAX_PATH_CHARS",
    "PathRefused",
    "Root",
    "resolve_for_read",
    "resolve_for_write",
    "resolve_inside",
]

MAX_PATH_CHARS = 4096  # PATH_MAX on Linux; longer text is no path, only a payload


class PathRefused(PermissionError):
    """A file path an agent gave is not allowed; the message says why and what is allowed."""


class Root(AbstractContextManager["Root"]):
    """The folder agents' file paths must stay inside, held open for as long as this lives.

    Parameters
    ----------
    path
        The folder (the person's choice: a link to it is fine).

    Examples
    --------
    >>> import tempfile
    >>> root = Root(tempfile.mkdtemp())
    >>> root.resolve("sub/../w.safetensors")
    'w.safetensors'
    >>> root.resolve("../elsewhere")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    workbench.mcp.paths.PathRefused: file_path '../elsewhere' resolves outside the allowed folder ...
    >>> root.close()
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.folder = Folder(path)
        self.where = self.folder.where
        self._named = re.compile(rf"{re.escape(DESCRIPTOR_DIR)}/{self.folder.fd}(?![0-9])/?")

    def close(self) -> None:
        self.folder.close()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ deciding
    def resolve(self, user_path: str) -> str:
        """``user_path`` as a canonical path beneath the root (``""``: the root itself).

        Relative paths are taken from the root; an absolute one must be written beneath it.
        Raises :class:`PathRefused` for anything empty, too long, with NUL, or leading out.
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
        rel = self._beneath(user_path) if user_path.startswith("/") else user_path
        try:
            return self.folder.resolve(rel)
        except LeavesFolder:
            raise self._outside(user_path) from None
        except OSError as e:  # link loops, names the OS refuses
            raise PathRefused(f"file_path {user_path!r} cannot be resolved: {e}") from None

    def _beneath(self, absolute: str) -> str:
        """An absolute path written beneath the root (as given, or its real name) made relative."""
        for anchor in (a.rstrip("/") for a in self.folder.anchors):
            if absolute == anchor or absolute.startswith(anchor + "/"):
                return absolute[len(anchor) :]
        raise self._outside(absolute)

    def _outside(self, user_path: str) -> PathRefused:
        return PathRefused(
            f"file_path {user_path!r} resolves outside the allowed folder {self.where}; "
            "give a path inside it (relative paths are taken from it; links out are refused)"
        )

    def for_read(self, user_path: str, format: WeightFormat | None = None) -> str:
        """Like :meth:`resolve`, for weights about to be read, companions included.

        Every file the readers open beside the one given (a raw-binary manifest, the index and
        shards of a sharded folder, ``config.json`` and the tokenizer files) must stay inside
        too. The readers check that again as they open them, beneath the same descriptor; this
        early look only gives the clearer message. ``format`` is the one the load will be given.
        """
        rel = self.resolve(user_path)
        try:
            entries = companion_files(self.path(rel), format)
        except OSError as e:
            raise PathRefused(
                f"file_path {user_path!r}: cannot list what it brings: {self.show_text(str(e))}"
            ) from None
        for entry in entries:
            try:
                self.folder.resolve(self._relative(entry))
            except (LeavesFolder, OSError):
                raise PathRefused(
                    f"file_path {user_path!r} would read {entry.name}, a link that leads "
                    f"outside the allowed folder {self.where}"
                ) from None
        return rel

    def for_write(self, user_path: str, protected: Sequence[Path] = ()) -> str:
        """Like :meth:`resolve`, for a file about to be written.

        The target must be a file name below the root (not the root, not an existing folder)
        and outside every ``protected`` folder (the learner's session: its example store and
        checkpoints are its own state, never an agent's output).
        """
        rel = self.resolve(user_path)
        if not rel:
            raise PathRefused(
                f"file_path {user_path!r} is the allowed folder itself; give a file name inside it"
            )
        try:
            info = self.folder.stat(rel)
        except OSError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise PathRefused(f"file_path {user_path!r} is an existing folder; give a file name")
        target = self.where / rel
        for folder in protected:
            guarded = Path(os.path.realpath(folder))
            if target.is_relative_to(guarded):
                raise PathRefused(
                    f"file_path {user_path!r} is inside the learner's session folder {guarded}, "
                    "which holds its example store and checkpoints; save somewhere else"
                )
        return rel

    # ------------------------------------------------------------------ naming
    def path(self, rel: str = "") -> Path:
        """The path to hand the learner for ``rel``: beneath the root's descriptor."""
        return self.folder.path(rel)

    def show(self, path: str | os.PathLike[str]) -> str:
        """A path as the agent sees it: relative to the root when beneath it."""
        text = self.show_text(os.fspath(path))
        p = Path(text)
        if p.is_absolute() and p.is_relative_to(self.where):
            return p.relative_to(self.where).as_posix() or "."
        return text

    def show_text(self, text: str) -> str:
        """``text`` (a message) with the root's descriptor paths written relative to the root."""
        return self._named.sub(lambda m: "" if m.group().endswith("/") else ".", text)

    def _relative(self, path: Path) -> str:
        text = os.fspath(path)
        prefix = os.fspath(self.folder.path())
        if text == prefix:
            return ""
        if text.startswith(prefix + "/"):
            return text[len(prefix) + 1 :]
        return os.path.relpath(text, self.where)


# ---------------------------------------------------------------------- one-shot checks
def resolve_inside(root: str | os.PathLike[str], user_path: str) -> Path:
    """Resolve ``user_path`` (relative to ``root``) and refuse it unless it stays inside ``root``.

    Returns the resolved, absolute path, for display: to open it race-free, keep a
    :class:`Root` and hand out :meth:`Root.path` instead.

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
    with Root(root) as r:
        return r.where / r.resolve(user_path)


def resolve_for_write(
    root: str | os.PathLike[str], user_path: str, protected: Sequence[Path] = ()
) -> Path:
    """:meth:`Root.for_write` as an absolute path.

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
    with Root(root) as r:
        return r.where / r.for_write(user_path, protected)


def resolve_for_read(
    root: str | os.PathLike[str], user_path: str, format: WeightFormat | None = None
) -> Path:
    """:meth:`Root.for_read` as an absolute path.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> resolve_for_read(root, "w.safetensors") == root.resolve() / "w.safetensors"
    True
    """
    with Root(root) as r:
        return r.where / r.for_read(user_path, format)
