"""A folder held open: its files named as descriptor paths and walked beneath its descriptor.

The boundary: :class:`Folder` owns one folder's descriptor and hands out paths beneath it
(``/proc/self/fd/N/...``) that :mod:`workbench.formats.opener` reads and
:mod:`workbench.formats.atomic` writes through, so code that only passes paths along stays in
the folder. The walk itself is :mod:`workbench.formats._walk`.
"""

from __future__ import annotations

import errno
import io
import os
import stat as stat_module
import weakref
from contextlib import AbstractContextManager
from pathlib import Path

from workbench.formats._walk import (
    CLOEXEC,
    DESCRIPTOR_DIR,
    Base,
    Walk,
    descriptor_paths,
    open_beneath,
    split,
)
from workbench.formats.opener import open_file, stat_if_present

__all__ = ["Folder"]


def _kernel_name(fd: int) -> str | None:
    """The absolute path the kernel gives an open folder now (None where it gives none).

    Unlike ``os.path.realpath`` of the name it was opened by, this never walks names, so it
    cannot fail half-way when someone swaps a link meanwhile.
    """
    if not descriptor_paths():
        return None
    try:
        name = os.readlink(f"{DESCRIPTOR_DIR}/{fd}")
    except OSError:
        return None
    return name if name.startswith("/") and not name.endswith(" (deleted)") else None


class Folder(AbstractContextManager["Folder"]):
    """A folder held open: files beneath it are opened through its descriptor only.

    Everything below is walked relative to the descriptor with ``O_NOFOLLOW``: a link that stays
    inside is followed by the walk, one that leads out is refused
    (:class:`~workbench.formats.opener.LeavesFolder`), and ``..`` never climbs above the folder. Renaming or replacing the folder's path afterwards
    changes nothing: the descriptor keeps the folder that was opened.

    Parameters
    ----------
    path
        The folder, opened as the operating system resolves it (the caller's choice).

    Examples
    --------
    >>> import tempfile
    >>> from workbench.formats.atomic import atomic_writer
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
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | CLOEXEC) if _fd is None else _fd
        try:
            where = Path(_kernel_name(fd) or os.path.realpath(path))
            anchors = (str(where), os.path.abspath(path))
        except BaseException:
            if _fd is None:
                os.close(fd)
            raise
        self.fd = fd
        self.where = where  # its absolute name when it was opened
        self._base = Base(fd, owned=False, anchors=anchors)
        # Closed when the Folder goes (no path naming it can then be in use: holders of such a
        # path hold the Folder too), or by close().
        self._finalizer = weakref.finalize(self, os.close, fd)

    def close(self) -> None:
        self._finalizer()

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
        parts = split(rel)
        if not descriptor_paths():
            return self.where.joinpath(*parts)
        return Path(DESCRIPTOR_DIR, str(self.fd), *parts)

    def resolve(self, rel: str) -> str:
        """The canonical form of ``rel`` beneath the folder (``""``: the folder itself).

        Links inside are followed, ``..`` and ``.`` applied; missing components are taken by
        their text (a file about to be written). Raises :class:`~workbench.formats.opener.LeavesFolder` for a path that
        leaves the folder, through ``..`` or a link.
        """
        walk = Walk(self._base, rel, rel)
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
        return stat_if_present(self.path(rel))

    def open(self, rel: str) -> io.BufferedReader:
        """Open ``rel`` beneath the folder for reading."""
        return open_file(self.path(rel))

    def subfolder(self, rel: str) -> Folder:
        """The folder ``rel`` beneath this one, held open in turn (close it when done).

        Whatever happens to the names on the way afterwards, it stays the folder walked into;
        files directly in it can then be checked, and opened, without walking again.
        """
        fd = open_beneath(self._base, rel, os.O_RDONLY | os.O_DIRECTORY, rel)
        try:
            return Folder(_kernel_name(fd) or self.where.joinpath(*split(rel)), _fd=fd)
        except BaseException:
            os.close(fd)
            raise
