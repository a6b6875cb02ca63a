"""A racing swapper and a kernel-level witness, for the tests that nothing outside a root is touched.

:class:`Swapper` flips a folder inside the root between a real folder and a link to a folder
outside, as fast as it can, on a thread of its own. :class:`Watch` (Linux inotify) sees every
open, read or write of the outside folder's files, by any process or thread (a server, the
learner's worker, a tokenizer library): canary contents and mtimes show that nothing was
*written*; only the kernel can show that nothing was even *opened*.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import itertools
import os
import struct
import threading
import time
from pathlib import Path

import pytest

IN_ACCESS, IN_MODIFY, IN_ATTRIB = 0x1, 0x2, 0x4
IN_CLOSE_WRITE, IN_CLOSE_NOWRITE, IN_OPEN = 0x8, 0x10, 0x20
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_Q_OVERFLOW = 0x4000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
ALL = (
    IN_ACCESS
    | IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_CLOSE_NOWRITE
    | IN_OPEN
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then the name, NUL-padded)
_NAMES = {
    IN_ACCESS: "read",
    IN_MODIFY: "write",
    IN_ATTRIB: "attrib",
    IN_CLOSE_WRITE: "close-write",
    IN_CLOSE_NOWRITE: "close",
    IN_OPEN: "open",
    IN_MOVED_FROM: "moved-from",
    IN_MOVED_TO: "moved-to",
    IN_CREATE: "create",
    IN_DELETE: "delete",
    IN_Q_OVERFLOW: "overflow",
}


def _libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c")
    if name is None or not hasattr(ctypes.CDLL(name), "inotify_init1"):
        pytest.skip("inotify is not available here")
    return ctypes.CDLL(name, use_errno=True)


class Watch:
    """Record every event on ``folder`` and the files directly in it until :meth:`close`."""

    def __init__(self, folder: Path) -> None:
        libc = _libc()
        self.fd = libc.inotify_init1(IN_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            pytest.skip(f"inotify_init1 failed: {os.strerror(ctypes.get_errno())}")
        wd = libc.inotify_add_watch(self.fd, os.fsencode(folder), ALL)
        if wd < 0:
            os.close(self.fd)
            pytest.skip(f"inotify_add_watch failed: {os.strerror(ctypes.get_errno())}")
        self.seen: list[str] = []

    def drain(self) -> list[str]:
        """The events so far, as ``"open w.safetensors"`` (the folder itself: ``"open ."``)."""
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    break
                raise
            pos = 0
            while pos < len(data):
                _wd, mask, _cookie, size = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size : pos + _EVENT.size + size].rstrip(b"\0")
                pos += _EVENT.size + size
                kinds = [label for bit, label in _NAMES.items() if mask & bit]
                self.seen.append(f"{'+'.join(kinds)} {os.fsdecode(name) or '.'}")
        return list(self.seen)

    def close(self) -> list[str]:
        """Stop watching; return every event seen."""
        events = self.drain()
        os.close(self.fd)
        self.fd = -1
        return events

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class Swapper(threading.Thread):
    """Flip ``root/name`` between the real folder and a link to ``outside`` until stopped.

    Each flip: park the folder under another name, put the link in its place, let the readers
    meet it, then take the link away and the folder back. A reader that creates ``name`` while
    it is missing (a save making its folder) gets its folder moved aside; the flipping goes on.
    """

    def __init__(self, root: Path, name: str, outside: Path, pause: float = 0.0002) -> None:
        super().__init__(name="swapper", daemon=True)
        self.box, self.parked, self.root = root / name, root / f".{name}.parked", root
        self.outside, self.pause = outside, pause
        self.flips = 0
        self.failure: BaseException | None = None
        self._halt = threading.Event()
        self._strays = itertools.count()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                try:
                    os.rename(self.box, self.parked)
                    os.symlink(self.outside, self.box)
                    time.sleep(self.pause)
                    os.unlink(self.box)
                    os.rename(self.parked, self.box)
                    self.flips += 1
                except OSError:
                    self._restore()
                time.sleep(self.pause)
        except BaseException as e:  # reported by stop(): a dead swapper tests nothing
            self.failure = e

    def _restore(self) -> None:
        """Whatever state a failed flip left: the real folder back at ``name``.

        A reader may make ``name`` again at any moment (a save creating its folder), so this
        tries until the real folder is back.
        """
        for _ in range(1000):
            if not os.path.lexists(self.parked):
                return
            try:
                if os.path.islink(self.box):
                    os.unlink(self.box)
                elif os.path.lexists(self.box):  # made by a reader while the name was free
                    os.rename(self.box, self.root / f".stray-{next(self._strays)}")
                os.rename(self.parked, self.box)
                return
            except OSError:
                continue
        raise RuntimeError("the swapper could not put the real folder back")

    def stop(self) -> int:
        """Stop flipping (the real folder is back in place); return the number of flips."""
        self._halt.set()
        self.join(30)
        assert not self.is_alive()
        if self.failure is not None:
            raise AssertionError(f"the swapper stopped early: {self.failure!r}")
        self._restore()
        assert self.box.is_dir() and not self.box.is_symlink()
        return self.flips


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file directly in ``folder``: its bytes and its mtime in nanoseconds."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}
