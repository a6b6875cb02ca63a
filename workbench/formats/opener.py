"""Opening weight files: through a folder's descriptor, never through a link that leads out.

The boundary: every file a reader or writer of ``workbench.formats`` touches is opened here;
the readers parse bytes and never call ``open`` themselves. Two kinds of path reach it:

- a **plain path** (``weights/model.bin``): the file it names is opened as the operating system
  resolves it (the caller chose it, links and all). The files a reader finds *beside* it (a
  raw-binary manifest, a shard index and its shards, ``config.json``) are opened beneath that
  file's folder, through the folder's descriptor, and one that is a link leading out of the
  folder is refused (a shard that links to ``~/.ssh/id_rsa`` is not a shard);
- a **descriptor path** (``/proc/self/fd/7/out/model.bin``): Linux's own name for a path beneath
  the folder that descriptor 7 holds open. Every component is opened relative to descriptor 7
  with ``O_NOFOLLOW``; a link that stays beneath it is followed by this walk (never by the
  kernel) and one that leads out is refused. :class:`Folder` holds such a descriptor and names
  its files this way (:meth:`Folder.path`), so code that only passes paths along (the learner)
  still reads and writes through it, with no check-then-open race, whatever else writes in the
  folder meanwhile.

Writes are atomic: a temporary file beside the target (``O_CREAT | O_EXCL | O_NOFOLLOW``),
fsync, ``renameat`` within the same open folder, fsync of that folder.

Readers that only accept a path (the GGUF reader, the ``tokenizers`` library) get one that names
exactly the file already opened here (:func:`pinned_file`, :func:`pinned_folder`).
"""

from __future__ import annotations

import errno
import io
import os
import re
import secrets
import shutil
import stat as stat_module
import sys
import tempfile
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = [
    "DESCRIPTOR_DIR",
    "Folder",
    "LeavesFolder",
    "atomic_writer",
    "exists",
    "is_descriptor_path",
    "is_dir",
    "is_file",
    "lexists",
    "open_file",
    "pinned_file",
    "pinned_folder",
    "stat",
]

DESCRIPTOR_DIR = "/proc/self/fd"
MAX_LINKS = 40  # links followed in one walk, as the kernel's own limit
_DESCRIPTOR = re.compile(r"/proc/self/fd/(\d+)(?:/(.*))?", re.DOTALL)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
# O_NONBLOCK: opening a FIFO someone left in the folder must not wait for a writer.
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC
_LINK_ERRNOS = {errno.ELOOP, errno.ENOTDIR, errno.EMLINK}  # O_NOFOLLOW met a link
_MISSING_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP}  # as pathlib ignores
_TEMP_MODE = 0o600  # as tempfile.mkstemp, which the writers used before


class LeavesFolder(PermissionError):
    """A path, or a link on it, leads out of the folder it must stay inside."""


def _descriptor_paths() -> bool:
    return sys.platform.startswith("linux") and os.path.isdir(DESCRIPTOR_DIR)


def is_descriptor_path(path: str | os.PathLike[str]) -> bool:
    """True for ``/proc/self/fd/N`` and the paths beneath it.

    >>> is_descriptor_path("/proc/self/fd/3/out/w.bin"), is_descriptor_path("out/w.bin")
    (True, False)
    """
    return _DESCRIPTOR.fullmatch(os.fspath(path)) is not None


# ---------------------------------------------------------------------------- the walk


def _split(rel: str) -> list[str]:
    return [p for p in rel.split("/") if p not in ("", ".")]


@dataclass
class _Base:
    """The folder a walk stays beneath: its descriptor and the absolute names it has."""

    fd: int
    owned: bool  # opened for this walk (closed after it), or borrowed
    anchors: tuple[str, ...] | None = None  # absolute spellings; None: ask the kernel

    def names(self) -> tuple[str, ...]:
        if self.anchors is None:
            self.anchors = (os.readlink(f"{DESCRIPTOR_DIR}/{self.fd}"),)
        return self.anchors

    def close(self) -> None:
        if self.owned:
            os.close(self.fd)


def _link_target(name: str, dir_fd: int, error: OSError) -> str | None:
    """The target of ``name`` when ``error`` came from opening a link (None: no link there now).

    Any other error is raised as it is.
    """
    if error.errno not in _LINK_ERRNOS:
        raise error
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return None


def _rebase(base: _Base, target: str, here: list[str]) -> list[str] | None:
    """A link's target as components beneath ``base`` (``here``: the link's folder); None when
    an absolute target lies elsewhere. A relative one may still climb out: the walk sees that.
    """
    if not target.startswith("/"):
        return [*here, *_split(target)]
    for anchor in base.names():
        anchor = anchor.rstrip("/")
        if target == anchor or target == anchor + "/":
            return []
        if target.startswith(anchor + "/"):
            return _split(target[len(anchor) :])
    return None


class _Walk:
    """Open the folders of a relative path beneath ``base``, one ``O_NOFOLLOW`` step at a time.

    ``..`` steps back to the folder opened before (never above ``base``); a link met on the way
    is read and its target walked instead, from ``base``, so the kernel never follows one.
    """

    def __init__(self, base: _Base, rel: str, shown: str) -> None:
        self.base, self.shown, self.hops = base, shown, 0
        self.parts: deque[str] = deque(_split(rel))
        self.stack: list[int] = []  # descriptors of the folders walked into, innermost last
        self.names: list[str] = []  # their names: the canonical path beneath base
        self.via: list[str] = []  # the links followed so far, for messages
        self.retries = 0  # steps run again because what was there changed meanwhile

    @property
    def fd(self) -> int:
        return self.stack[-1] if self.stack else self.base.fd

    def close(self) -> None:
        while self.stack:
            os.close(self.stack.pop())

    def follow(self, name: str, error: OSError) -> None:
        """``name`` (in the current folder) could not be opened: walk its target if it is a link.

        A link that is gone by the time it is read (someone swapping it) makes the step run
        again, a few times; an error that is no link's is raised, naming the whole path.
        """
        if error.errno not in _LINK_ERRNOS:
            raise self.error(error, name)
        target = _link_target(name, self.fd, error)
        if target is None:
            self.retries += 1
            if self.retries > 3:
                raise self.error(error, name)
            self.parts.appendleft(name)
            return
        self.hops += 1
        if self.hops > MAX_LINKS:
            raise OSError(errno.ELOOP, f"{self.shown}: too many levels of links")
        start = _rebase(self.base, target, self.names)
        if start is None:
            raise self.leaves([*self.names, name])
        self.parts = deque([*start, *self.parts])
        self.close()
        self.names = []
        self.via = [*self.via, name]

    def error(self, error: OSError, name: str) -> OSError:
        """``error`` met at ``name``, its message naming the path rather than one component."""
        where = "/".join([*self.names, name])
        text = error.strerror or str(error)
        return type(error)(error.errno, f"{text}: {self.shown} (at {where})")

    def leaves(self, link: list[str] | None = None) -> LeavesFolder:
        """The refusal, naming the link (or the ``..``) that would lead out of the folder."""
        if link is not None and not self.parts and not self.via:
            why = "is a link that leads out of its folder"
        elif link is not None:
            why = f"passes through {'/'.join(link)}, a link that leads out of its folder"
        else:
            why = "climbs out of its folder with '..'"
            if self.via:
                why += f" (after the link {self.via[-1]})"
        return LeavesFolder(errno.EACCES, f"{self.shown} {why}")

    def descend(self, create: bool = False, lexical: bool = False) -> str | None:
        """Walk every component but the last; return the last (None: the folder itself).

        ``create`` makes missing folders; ``lexical`` takes the rest of the path by its text
        once a folder is missing (then ``fd`` is the deepest one that exists).
        """
        missing = False  # a folder on the way does not exist: the rest is only text
        while self.parts:
            name = self.parts.popleft()
            if name == "..":
                if not self.names:
                    raise self.leaves()
                if len(self.stack) == len(self.names):
                    os.close(self.stack.pop())
                self.names.pop()
                missing = len(self.stack) < len(self.names)
                continue
            if not self.parts:
                return name
            if missing:
                self.names.append(name)
                continue
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
            except FileNotFoundError as e:
                if create:
                    with suppress(FileExistsError):
                        os.mkdir(name, 0o777, dir_fd=self.fd)
                    self.hops += 1
                    if self.hops > MAX_LINKS:
                        raise self.error(e, name) from None
                    self.parts.appendleft(name)  # open what is there now, through this walk
                    continue
                if not lexical:
                    raise self.error(e, name) from None
                missing = True
                self.names.append(name)
                continue
            except OSError as e:
                self.follow(name, e)
                continue
            self.stack.append(fd)
            self.names.append(name)
        return None


def _open_beneath(base: _Base, rel: str, flags: int, shown: str, mode: int = 0o666) -> int:
    """A descriptor for ``rel`` beneath ``base``, opened with ``flags`` (links inside followed)."""
    walk = _Walk(base, rel, shown)
    try:
        while True:
            last = walk.descend()
            if last is None:
                return os.open(".", flags | _CLOEXEC, dir_fd=walk.fd)
            try:
                fd = os.open(last, flags | os.O_NOFOLLOW | _CLOEXEC, mode, dir_fd=walk.fd)
            except OSError as e:
                walk.follow(last, e)
                continue
            try:
                sys.audit("workbench.formats.open", shown, flags)
            except BaseException:
                os.close(fd)
                raise
            return fd
    finally:
        walk.close()


# ---------------------------------------------------------------------------- locating


@dataclass
class _Located:
    base: _Base | None  # None: a plain path the caller named, opened as the OS resolves it
    rel: str
    shown: str

    def close(self) -> None:
        if self.base is not None:
            self.base.close()


def _locate(path: str | os.PathLike[str], beneath: str | os.PathLike[str] | None) -> _Located:
    text = os.fspath(path)
    found = _DESCRIPTOR.fullmatch(text)
    if found is not None:
        return _Located(_Base(int(found.group(1)), owned=False), found.group(2) or "", text)
    if beneath is None:
        return _Located(None, text, text)
    folder = os.fspath(beneath)
    rel = os.path.relpath(text, folder)
    assert not rel.startswith(".."), f"{text} is not beneath {folder}"
    anchors = (os.path.realpath(folder), os.path.abspath(folder))  # before the descriptor
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    return _Located(_Base(fd, owned=True, anchors=anchors), rel, text)


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
        return os.open(loc.rel, flags | _CLOEXEC)
    if not loc.rel and not loc.base.owned:  # /proc/self/fd/N itself: the very file N holds
        return os.open(f"{DESCRIPTOR_DIR}/{loc.base.fd}", flags | _CLOEXEC)
    return _open_beneath(loc.base, loc.rel, flags, loc.shown)


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
        fd = _open(loc, _READ_FLAGS)
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
        fd = _open(loc, _READ_FLAGS)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def _kind(
    path: str | os.PathLike[str], beneath: str | os.PathLike[str] | None
) -> os.stat_result | None:
    try:
        return stat(path, beneath=beneath)
    except LeavesFolder:
        raise
    except OSError as e:
        if e.errno in _MISSING_ERRNOS:
            return None
        raise


def exists(path: str | os.PathLike[str], *, beneath: str | os.PathLike[str] | None = None) -> bool:
    """``Path.exists``, beneath the folder; a link leading out raises :class:`LeavesFolder`."""
    return _kind(path, beneath) is not None


def is_file(path: str | os.PathLike[str], *, beneath: str | os.PathLike[str] | None = None) -> bool:
    """``Path.is_file``, beneath the folder; a link leading out raises :class:`LeavesFolder`."""
    info = _kind(path, beneath)
    return info is not None and stat_module.S_ISREG(info.st_mode)


def is_dir(path: str | os.PathLike[str], *, beneath: str | os.PathLike[str] | None = None) -> bool:
    """``Path.is_dir``, beneath the folder; a link leading out raises :class:`LeavesFolder`."""
    info = _kind(path, beneath)
    return info is not None and stat_module.S_ISDIR(info.st_mode)


def lexists(path: str | os.PathLike[str], *, beneath: str | os.PathLike[str] | None = None) -> bool:
    """True when something is there, a link included (dangling or leading out)."""
    with _located(path, beneath) as loc:
        if loc.base is None:
            return os.path.lexists(loc.rel)
        walk = _Walk(loc.base, loc.rel, loc.shown)
        try:
            last = walk.descend()
            if last is None:
                return True
            os.stat(last, dir_fd=walk.fd, follow_symlinks=False)
            return True
        except LeavesFolder:
            return True
        except OSError as e:
            if e.errno in _MISSING_ERRNOS:
                return False
            raise
        finally:
            walk.close()


# ---------------------------------------------------------------------------- writing


@contextmanager
def _parent_for_write(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """The open folder a write of ``path`` goes into (created when missing) and the file name."""
    text = os.fspath(path)
    found = _DESCRIPTOR.fullmatch(text)
    if found is None:
        target = Path(text)
        folder = target.parent if str(target.parent) else Path(".")
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        try:
            yield fd, target.name
        finally:
            os.close(fd)
        return
    walk = _Walk(_Base(int(found.group(1)), owned=False), found.group(2) or "", text)
    try:
        last = walk.descend(create=True)
        if last is None:
            raise IsADirectoryError(errno.EISDIR, f"{text} is a folder; give a file name")
        yield walk.fd, last
    finally:
        walk.close()


@contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Write ``path`` all or nothing: a temp file in the same folder, fsync, rename, fsync folder.

    A crash at any point leaves either the old file or the new one, never a torn file. The
    rename replaces a link at ``path`` rather than writing where it points.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "sub" / "w.bin"
    >>> with atomic_writer(target) as f:
    ...     _ = f.write(b"weights")
    >>> target.read_bytes(), sorted(p.name for p in target.parent.iterdir())
    (b'weights', ['w.bin'])
    """
    shown = os.fspath(path)
    sys.audit("workbench.formats.open", shown, os.O_WRONLY)
    with _parent_for_write(path) as (folder, name):
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
        for _ in range(100):
            tmp = f".{name}.{secrets.token_hex(4)}.tmp"
            try:
                fd = os.open(tmp, flags, _TEMP_MODE, dir_fd=folder)
                break
            except FileExistsError:
                continue
            except OSError as e:  # e.g. the folder was removed since it was opened
                raise type(e)(e.errno, f"cannot write {shown}: {e.strerror}") from None
        else:
            raise FileExistsError(errno.EEXIST, f"no free temporary name beside {shown}")
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            try:
                os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
            except OSError as e:  # e.g. a folder stands at the name
                raise type(e)(e.errno, f"cannot write {shown}: {e.strerror}") from None
            os.fsync(folder)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=folder)
            raise


# ---------------------------------------------------------------------------- path-only readers


@contextmanager
def pinned_file(
    path: str | os.PathLike[str], *, beneath: str | os.PathLike[str] | None = None
) -> Iterator[Path]:
    """A path naming exactly the file :func:`open_file` opens, for readers that take paths.

    On Linux it is ``/proc/self/fd/N`` of the open file (whatever happens to the name
    meanwhile); elsewhere the path itself.
    """
    if not _descriptor_paths():
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
    if not _descriptor_paths():
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
                if isinstance(e, LeavesFolder) or e.errno not in _MISSING_ERRNOS:
                    raise
                continue
            opened.append(f)
            (view / name).symlink_to(f"{DESCRIPTOR_DIR}/{f.fileno()}")
        yield view
    finally:
        for each in opened:
            each.close()
        shutil.rmtree(private, ignore_errors=True)


def _kernel_name(fd: int) -> str | None:
    """The absolute path the kernel gives an open folder now (None where it gives none).

    Unlike ``os.path.realpath`` of the name it was opened by, this never walks names, so it
    cannot fail half-way when someone swaps a link meanwhile.
    """
    if not _descriptor_paths():
        return None
    try:
        name = os.readlink(f"{DESCRIPTOR_DIR}/{fd}")
    except OSError:
        return None
    return name if name.startswith("/") and not name.endswith(" (deleted)") else None


def _folder_name(folder: str | os.PathLike[str]) -> str:
    text = os.fspath(folder)
    found = _DESCRIPTOR.fullmatch(text)
    if found is not None and not found.group(2):
        with suppress(OSError):
            return Path(os.readlink(text)).name or "folder"
    return Path(os.path.abspath(text)).name or "folder"


# ---------------------------------------------------------------------------- Folder


class Folder:
    """A folder held open: files beneath it are opened through its descriptor only.

    Everything below is walked relative to the descriptor with ``O_NOFOLLOW``: a link that stays
    inside is followed by the walk, one that leads out is refused (:class:`LeavesFolder`), and
    ``..`` never climbs above the folder. Renaming or replacing the folder's path afterwards
    changes nothing: the descriptor keeps the folder that was opened.

    Parameters
    ----------
    path
        The folder, opened as the operating system resolves it (the caller's choice).

    Examples
    --------
    >>> import tempfile
    >>> top = Path(tempfile.mkdtemp())
    >>> (top / "root" / "sub").mkdir(parents=True)
    >>> (top / "root" / "in").symlink_to("sub")
    >>> (top / "root" / "out").symlink_to(top)
    >>> root = Folder(top / "root")
    >>> root.resolve("in/../sub/./w.bin")
    'sub/w.bin'
    >>> with atomic_writer(root.path("in/w.bin")) as f:
    ...     _ = f.write(b"x")
    >>> (top / "root" / "sub" / "w.bin").read_bytes()
    b'x'
    >>> root.resolve("out/secret")
    Traceback (most recent call last):
    ...
    workbench.formats.opener.LeavesFolder: [Errno 13] out/secret passes through out, a link that leads out of its folder
    >>> root.close()
    """

    def __init__(self, path: str | os.PathLike[str], *, _fd: int | None = None) -> None:
        # _fd: a descriptor of the folder ``path`` names, handed over (the caller closes it if
        # this raises). Nothing may raise once the finalizer owns the descriptor: a failed
        # __init__ whose finalizer later closed a number already closed and reused would close
        # someone else's file.
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC) if _fd is None else _fd
        try:
            where = Path(_kernel_name(fd) or os.path.realpath(path))
            anchors = (str(where), os.path.abspath(path))
        except BaseException:
            if _fd is None:
                os.close(fd)
            raise
        self.fd = fd
        self.where = where  # its absolute name when it was opened
        self._base = _Base(fd, owned=False, anchors=anchors)
        # Closed when the Folder goes (no path naming it can then be in use: holders of such a
        # path hold the Folder too), or by close().
        self._finalizer = weakref.finalize(self, os.close, fd)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Folder({str(self.where)!r}, fd={self.fd})"

    @property
    def anchors(self) -> tuple[str, ...]:
        """The absolute names of the folder: as given, and with links resolved."""
        return self._base.names()

    def path(self, rel: str = "") -> Path:
        """A path naming ``rel`` beneath this folder's descriptor (``/proc/self/fd/N/rel``).

        Whoever opens it through ``workbench.formats`` walks it beneath the descriptor. Where
        the system has no ``/proc/self/fd`` it is the folder's absolute path plus ``rel``
        (opened by name: a check-then-open race stays possible there).
        """
        parts = _split(rel)
        if not _descriptor_paths():
            return self.where.joinpath(*parts)
        return Path(DESCRIPTOR_DIR, str(self.fd), *parts)

    def resolve(self, rel: str) -> str:
        """The canonical form of ``rel`` beneath the folder (``""``: the folder itself).

        Links inside are followed, ``..`` and ``.`` applied; missing components are taken by
        their text (a file about to be written). Raises :class:`LeavesFolder` for a path that
        leaves the folder, through ``..`` or a link.
        """
        walk = _Walk(self._base, rel, rel)
        try:
            while True:
                last = walk.descend(lexical=True)
                if last is None:
                    return "/".join(walk.names)
                if len(walk.stack) == len(walk.names):  # every folder on the way exists
                    try:
                        info = os.stat(last, dir_fd=walk.fd, follow_symlinks=False)
                    except FileNotFoundError:
                        info = None
                    if info is not None and stat_module.S_ISLNK(info.st_mode):
                        walk.follow(last, OSError(errno.ELOOP, "link"))
                        continue
                return "/".join([*walk.names, last])
        finally:
            walk.close()

    def stat(self, rel: str) -> os.stat_result | None:
        """``os.stat`` of ``rel`` beneath the folder (links inside followed); None if missing."""
        return _kind(self.path(rel), None)

    def open(self, rel: str) -> io.BufferedReader:
        """Open ``rel`` beneath the folder for reading."""
        return open_file(self.path(rel))

    def subfolder(self, rel: str) -> Folder:
        """The folder ``rel`` beneath this one, held open in turn (close it when done).

        Whatever happens to the names on the way afterwards, it stays the folder walked into;
        files directly in it can then be checked, and opened, without walking again.
        """
        fd = _open_beneath(self._base, rel, os.O_RDONLY | os.O_DIRECTORY, rel)
        try:
            return Folder(_kernel_name(fd) or self.where.joinpath(*_split(rel)), _fd=fd)
        except BaseException:
            os.close(fd)
            raise
