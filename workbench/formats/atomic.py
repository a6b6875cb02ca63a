"""Writing weight files all or nothing, through the folder they go into.

The boundary: every file a writer of ``workbench.formats`` creates is written here. A
temporary file beside the target (``O_CREAT | O_EXCL | O_NOFOLLOW``), fsync, ``renameat``
within the same open folder, fsync of that folder. A descriptor path
(``/proc/self/fd/N/...``, a :class:`~workbench.formats.folder.Folder`'s files) is written
beneath its descriptor by the same walk the opener reads with (:mod:`workbench.formats._walk`).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from workbench.formats._walk import CLOEXEC, DESCRIPTOR, Base, Walk

__all__ = ["TargetIsAFolder", "atomic_writer", "check_target"]

# As open() creates files: the kernel takes away the umask (or applies the folder's default
# ACL), so saved weights are readable by whoever the user's other files are readable by.
_NEW_FILE_MODE = 0o666


class TargetIsAFolder(IsADirectoryError):
    """A folder stands where a file is to be written; ``path`` is the path as given."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.EISDIR, f"{path} is a folder: give a file name inside it")
        self.path = path


def _refuse_folder(folder: int, name: str, shown: str) -> None:
    """Raise before anything is written when a folder stands at ``name`` (a link is replaced)."""
    if name in ("", ".", ".."):
        raise TargetIsAFolder(shown)
    try:
        info = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        raise TargetIsAFolder(shown)


@contextmanager
def _parent_for_write(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """The open folder a write of ``path`` goes into (created when missing) and the file name."""
    text = os.fspath(path)
    found = DESCRIPTOR.fullmatch(text)
    if found is None:
        target = Path(text)
        folder = target.parent if str(target.parent) else Path(".")
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | CLOEXEC)
        try:
            yield fd, target.name
        finally:
            os.close(fd)
        return
    walk = Walk(Base(int(found.group(1)), owned=False), found.group(2) or "", text)
    try:
        last = walk.descend(create=True)
        if last is None:
            raise TargetIsAFolder(text)
        yield walk.fd, last
    finally:
        walk.close()


def check_target(path: str | os.PathLike[str]) -> None:
    """Raise :class:`TargetIsAFolder` when a folder stands at ``path``, as a write would.

    For a writer that writes other files first (a Hugging Face folder's ``config.json``) and
    wants to fail before them. A link at ``path`` is no folder here: a write replaces it. Like a
    write, it creates the missing folders above ``path``.
    """
    with _parent_for_write(path) as (folder, name):
        _refuse_folder(folder, name, os.fspath(path))


@contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Write ``path`` all or nothing: a temp file in the same folder, fsync, rename, fsync folder.

    A crash at any point leaves either the old file or the new one, never a torn file. The
    rename replaces a link at ``path`` rather than writing where it points. The file gets the
    permissions ``open()`` would give a new one (``0o666`` less the umask); a folder at ``path``
    raises ``IsADirectoryError`` naming ``path`` before anything is written.

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
        _refuse_folder(folder, name, shown)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | CLOEXEC
        for _ in range(100):
            tmp = f".{name}.{secrets.token_hex(4)}.tmp"
            try:
                fd = os.open(tmp, flags, _NEW_FILE_MODE, dir_fd=folder)
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
            except IsADirectoryError:  # a folder made at the name since the check above
                raise TargetIsAFolder(shown) from None
            except OSError as e:
                raise type(e)(e.errno, f"cannot write {shown}: {e.strerror}") from None
            os.fsync(folder)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=folder)
            raise
