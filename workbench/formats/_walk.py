"""The walk beneath a folder's descriptor: what the opener, atomic writes and ``Folder`` share.

The boundary: this module turns a relative path into descriptors, one ``O_NOFOLLOW`` step at a
time beneath a folder held open, following a link only by reading it and walking its target
itself, and refusing one that leads out (:class:`LeavesFolder`). It opens no file by a plain
name and knows nothing of weight formats; :mod:`workbench.formats.opener` (reading),
:mod:`workbench.formats.atomic` (writing) and :mod:`workbench.formats.folder` build on it.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections import deque
from contextlib import suppress
from dataclasses import dataclass

DESCRIPTOR_DIR = "/proc/self/fd"
MAX_LINKS = 40  # links followed in one walk, as the kernel's own limit
DESCRIPTOR = re.compile(r"/proc/self/fd/(\d+)(?:/(.*))?", re.DOTALL)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | CLOEXEC
# O_NONBLOCK: opening a FIFO someone left in the folder must not wait for a writer.
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | CLOEXEC
_LINK_ERRNOS = {errno.ELOOP, errno.ENOTDIR, errno.EMLINK}  # O_NOFOLLOW met a link
MISSING_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP}  # as pathlib ignores


class LeavesFolder(PermissionError):
    """A path, or a link on it, leads out of the folder it must stay inside."""


# Raised through the opener's functions and documented there: shown under its public home.
LeavesFolder.__module__ = "workbench.formats.opener"


def descriptor_paths() -> bool:
    """True where ``/proc/self/fd/N`` names what descriptor N holds (Linux)."""
    return sys.platform.startswith("linux") and os.path.isdir(DESCRIPTOR_DIR)


def split(rel: str) -> list[str]:
    return [p for p in rel.split("/") if p not in ("", ".")]


@dataclass
class Base:
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


def _rebase(base: Base, target: str, here: list[str]) -> list[str] | None:
    """A link's target as components beneath ``base`` (``here``: the link's folder); None when
    an absolute target lies elsewhere. A relative one may still climb out: the walk sees that.
    """
    if not target.startswith("/"):
        return [*here, *split(target)]
    for anchor in base.names():
        anchor = anchor.rstrip("/")
        if target == anchor or target == anchor + "/":
            return []
        if target.startswith(anchor + "/"):
            return split(target[len(anchor) :])
    return None


class Walk:
    """Open the folders of a relative path beneath ``base``, one ``O_NOFOLLOW`` step at a time.

    ``..`` steps back to the folder opened before (never above ``base``); a link met on the way
    is read and its target walked instead, from ``base``, so the kernel never follows one.
    """

    def __init__(self, base: Base, rel: str, shown: str) -> None:
        self.base, self.shown, self.hops = base, shown, 0
        self.parts: deque[str] = deque(split(rel))
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
                fd = os.open(name, DIR_FLAGS, dir_fd=self.fd)
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


def open_beneath(base: Base, rel: str, flags: int, shown: str, mode: int = 0o666) -> int:
    """A descriptor for ``rel`` beneath ``base``, opened with ``flags`` (links inside followed)."""
    walk = Walk(base, rel, shown)
    try:
        while True:
            last = walk.descend()
            if last is None:
                return os.open(".", flags | CLOEXEC, dir_fd=walk.fd)
            try:
                fd = os.open(last, flags | os.O_NOFOLLOW | CLOEXEC, mode, dir_fd=walk.fd)
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
