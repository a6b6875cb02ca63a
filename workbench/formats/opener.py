"""Opening weight files: through a folder's descriptor, never through a link that leads out.

The boundary: every file a reader of ``workbench.formats`` touches is opened here (writers go
through :mod:`workbench.formats.atomic`); the readers parse bytes and never call ``open``
themselves. Two kinds of path reach it:

- a **plain path** (``weights/model.bin``): the file it names is opened as the operating system
  resolves it (the caller chose it, links and all). The files a reader finds *beside* it (a
  raw-binary manifest, a shard index and its shards, ``config.json``) are opened beneath that
  file's folder, through the folder's descriptor, and one that is a link leading out of the
  folder is refused (a shard that links to ``~/.ssh/id_rsa`` is not a shard);
- a **descriptor path** (``/proc/self/fd/7/out/model.bin``): Linux's own name for a path beneath
  the folder that descriptor 7 holds open. Every component is opened relative to descriptor 7
  with ``O_NOFOLLOW``; a link that stays beneath it is followed by this walk (never by the
  kernel) and one that leads out is refused (the walk itself is :mod:`workbench.formats._walk`).
  :class:`~workbench.formats.folder.Folder` holds such a descriptor and names its files this
  way, so code that only passes paths along (the learner) still reads and writes through it,
  with no check-then-open race, whatever else writes in the folder meanwhile.

Readers that only accept a path (the GGUF reader, the ``tokenizers`` library) get one that names
exactly the file already opened here (:func:`pinned_file`, :func:`pinned_folder`).
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat as stat_module
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from workbench.formats._walk import (
    CLOEXEC,
    DESCRIPTOR,
    DESCRIPTOR_DIR,
    MISSING_ERRNOS,
    READ_FLAGS,
    Base,
    LeavesFolder,
    Walk,
    descriptor_paths,
    open_beneath,
)

__all__ = [
    "DESCRIPTOR_DIR",
    "LeavesFolder",
    "exists",
    "is_descriptor_path",
    "is_dir",
    "is_file",
    "lexists",
    "open_file",
    "pinned_file",
    "pinned_folder",
    "stat",
    "stat_if_present",
]


def is_descriptor_path(path: str | os.PathLike[str]) -> bool:
    """True for ``/proc/self/fd/N`` and the paths beneath it.

    >>> is_descriptor_path("/proc/self/fd/3/out/w.bin"), is_descriptor_path("out/w.bin")
    (True, False)
    """
    return DESCRIPTOR.fullmatch(os.fspath(path)) is not None


# ---------------------------------------------------------------------------- locating


@dataclass
class _Located:
    base: Base | None  # None: a plain path the caller named, opened as the OS resolves it
    rel: str
    shown: str

    def close(self) -> None:
        if self.base is not None:
            self.base.close()


def _locate(path: str | os.PathLike[str], beneath: str | os.PathLike[str] | None) -> _Located:
    text = os.fspath(path)
    found = DESCRIPTOR.fullmatch(text)
    if found is not None:
        return _Located(Base(int(found.group(1)), owned=False), found.group(2) or "", text)
    if beneath is None:
        return _Located(None, text, text)
    folder = os.fspath(beneath)
    rel = os.path.relpath(text, folder)
    assert not rel.startswith(".."), f"{text} is not beneath {folder}"
    anchors = (os.path.realpath(folder), os.path.abspath(folder))  # before the descriptor
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | CLOEXEC)
    return _Located(Base(fd, owned=True, anchors=anchors), rel, text)


@contextmanager
def _located(
    path: str | os.PathLike[str], beneath: str | os.PathLike[str] | None
) -> Iterator[_Located]:
    loc = _locate(path, beneath)
    try:
        yield loc
    finally:
        loc.close()


def _open(loc: _Located, flags: int) -> int:
    if loc.base is None:
        return os.open(loc.rel, flags | CLOEXEC)
    if not loc.rel and not loc.base.owned:  # /proc/self/fd/N itself: the very file N holds
        return os.open(f"{DESCRIPTOR_DIR}/{loc.base.fd}", flags | CLOEXEC)
    return open_beneath(loc.base, loc.rel, flags, loc.shown)


def open_file(
    path: str | os.PathLike[str], *, beneath: str | os.PathLike[str] | None = None
) -> io.BufferedReader:
    """Open a regular file for reading (buffered, binary).

    Parameters
    ----------
    path
        A plain path (opened as named) or a descriptor path (walked beneath its descriptor).
    beneath
        For a plain path: the folder it must stay inside (a companion beside the weights the
        caller named); a link on the way that leads out raises :class:`LeavesFolder`.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.json").write_text("{}")
    >>> with open_file(folder / "a.json", beneath=folder) as f:
    ...     f.read()
    b'{}'
    >>> (folder / "b.json").symlink_to("/etc/hostname")
    >>> open_file(folder / "b.json", beneath=folder)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    workbench.formats.opener.LeavesFolder: [Errno 13] .../b.json is a link that leads out of its folder
    """
    with _located(path, beneath) as loc:
        fd = _open(loc, READ_FLAGS)
    try:
        info = os.fstat(fd)
        if stat_module.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, f"{os.fspath(path)} is a folder")
        if not stat_module.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, f"{os.fspath(path)} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def stat(
    path: str | os.PathLike[str], *, beneath: str | os.PathLike[str] | None = None
) -> os.stat_result:
    """``os.stat`` (links inside followed), beneath the folder as :func:`open_file` is."""
    with _located(path, beneath) as loc:
        if loc.base is None:
            return os.stat(loc.rel)
        fd = _open(loc, READ_FLAGS)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def stat_if_present(
    path: str | os.PathLike[str], *, beneath: str | os.PathLike[str] | None = None
) -> os.stat_result | None:
    """:func:`stat`, or None when nothing is there; a link leading out raises :class:`LeavesFolder`."""
    try:
        return stat(path, beneath=beneath)
    except LeavesFolder:
        raise
    except OSError as e:
        if e.errno in MISSING_ERRNOS:
            return None
        raise


def exists(path: str | os.PathLike[str], *, beneath: str | os.PathLike[str] | None = None) -> bool:
    """``Path.exists``, beneath the folder; a link leading out raises :class:`LeavesFolder`."""
    return stat_if_present(path, beneath=beneath) is not None


def is_file(path: str | os.PathLike[str], *, beneath: str | os.PathLike[str] | None = None) -> bool:
    """``Path.is_file``, beneath the folder; a link leading out raises :class:`LeavesFolder`."""
    info = stat_if_present(path, beneath=beneath)
    return info is not None and stat_module.S_ISREG(info.st_mode)


def is_dir(path: str | os.PathLike[str], *, beneath: str | os.PathLike[str] | None = None) -> bool:
    """``Path.is_dir``, beneath the folder; a link leading out raises :class:`LeavesFolder`."""
    info = stat_if_present(path, beneath=beneath)
    return info is not None and stat_module.S_ISDIR(info.st_mode)


def lexists(path: str | os.PathLike[str], *, beneath: str | os.PathLike[str] | None = None) -> bool:
    """True when something is there, a link included (dangling or leading out)."""
    with _located(path, beneath) as loc:
        if loc.base is None:
            return os.path.lexists(loc.rel)
        walk = Walk(loc.base, loc.rel, loc.shown)
        try:
            last = walk.descend()
            if last is None:
                return True
            os.stat(last, dir_fd=walk.fd, follow_symlinks=False)
            return True
        except LeavesFolder:
            return True
        except OSError as e:
            if e.errno in MISSING_ERRNOS:
                return False
            raise
        finally:
            walk.close()


# ---------------------------------------------------------------------------- path-only readers


@contextmanager
def pinned_file(
    path: str | os.PathLike[str], *, beneath: str | os.PathLike[str] | None = None
) -> Iterator[Path]:
    """A path naming exactly the file :func:`open_file` opens, for readers that take paths.

    On Linux it is ``/proc/self/fd/N`` of the open file (whatever happens to the name
    meanwhile); elsewhere the path itself.
    """
    if not descriptor_paths():
        yield Path(path)
        return
    with open_file(path, beneath=beneath) as f:
        yield Path(DESCRIPTOR_DIR, str(f.fileno()))


@contextmanager
def pinned_folder(folder: str | os.PathLike[str], names: Iterable[str]) -> Iterator[Path]:
    """A private folder holding ``names`` from ``folder``, each a link to the file opened here.

    For readers that take a folder and open files in it by name (the ``tokenizers`` library):
    they then read exactly the files opened beneath ``folder`` (missing ones stay missing), not
    whatever the names point to by then. The private folder has ``folder``'s name and is
    removed afterwards. Elsewhere than on Linux it is ``folder`` itself.
    """
    if not descriptor_paths():
        yield Path(folder)
        return
    private = Path(tempfile.mkdtemp(prefix="workbench-pinned-"))
    opened: list[io.BufferedReader] = []
    try:
        view = private / _folder_name(folder)
        view.mkdir()
        for name in names:
            try:
                f = open_file(Path(folder, name), beneath=folder)
            except OSError as e:
                if isinstance(e, LeavesFolder) or e.errno not in MISSING_ERRNOS:
                    raise
                continue
            opened.append(f)
            (view / name).symlink_to(f"{DESCRIPTOR_DIR}/{f.fileno()}")
        yield view
    finally:
        for each in opened:
            each.close()
        shutil.rmtree(private, ignore_errors=True)


def _folder_name(folder: str | os.PathLike[str]) -> str:
    text = os.fspath(folder)
    found = DESCRIPTOR.fullmatch(text)
    if found is not None and not found.group(2):
        with suppress(OSError):
            return Path(os.readlink(text)).name or "folder"
    return Path(os.path.abspath(text)).name or "folder"
