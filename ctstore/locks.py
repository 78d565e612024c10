"""Exclusive writers on a local workspace: flock-based locks on artifacts and scratch areas.

``<workspace>/.locks/<kind>-<fp>.lock`` guards the build of one artifact,
``.locks/<name>.lock`` a scratch area under ``<workspace>/tmp/``. The lock is
the kernel's ``flock`` on the file, so a process that dies releases it and
nothing ever needs taking over; ``ctstore gc`` leaves locked directories alone
and removes lock files nobody holds.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import socket
import time
from typing import TYPE_CHECKING

from .errors import CtstoreError, write_error
from .log import log

if TYPE_CHECKING:
    from .workspace import Workspace

__all__ = ["ArtifactLock", "lock_owner_alive"]


def lock_owner_alive(path: str) -> bool:
    """True while some process holds the lock file ``path`` (the kernel drops a dead process's lock)."""
    try:  # never blocks on a FIFO, never follows a link: neither is a lock ctstore made
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except (FileNotFoundError, IsADirectoryError):
        return False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return False
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def try_lock(path: str) -> int | None:
    """An fd holding ``path`` exclusively, or None when another process holds it.

    The file is opened, then locked; if it was removed or replaced in between
    (its holder released it, or gc removed it as stale), the lock is on a
    file nobody else will ever see, so it is dropped and taken again.
    """
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise CtstoreError(f"{path}: lock file is a symbolic link; remove it (ctstore gc does)") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CtstoreError(f"{path}: lock file is not a regular file; remove it (ctstore gc does)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            return fd
        os.close(fd)


class ArtifactLock:
    """Exclusive right to write one artifact: an flock on ``.locks/<kind>-<fp>.lock``.

    A second process asking for the same artifact waits until the lock is
    released (then finds the complete artifact and reuses it). The kernel
    releases the lock of a process that dies, so a killed job never leaves a
    lock behind that needs taking over. Remote workspaces rely on the atomic
    manifest alone: two writers compute the same content, the last manifest wins.
    """

    def __init__(self, ws: Workspace, kind: str, fp: str, timeout: float, path: str):
        self.ws, self.kind, self.fp, self.timeout, self.path = ws, kind, fp, timeout, path
        self.fd: int | None = None

    def __enter__(self) -> "ArtifactLock":
        if not self.ws.is_local:
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        deadline = time.monotonic() + self.timeout
        announced = False
        while (fd := try_lock(self.path)) is None:
            if not announced:
                log(f"waiting for another process writing {self.kind}/{self.fp} ...")
                announced = True
            if time.monotonic() > deadline:
                raise CtstoreError(f"{self.path}: still locked after {self.timeout:.0f} s") from None
            time.sleep(0.2)
        try:  # who holds it, for a person looking at .locks/ (the lock itself is the flock)
            os.ftruncate(fd, 0)
            os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        except OSError as exc:  # a full disk: no room even for the lock's one line
            self._release(fd)
            raise write_error(self.path, "lock file", exc) from None
        self.fd = fd
        return self

    def _release(self, fd: int) -> None:
        try:  # remove while still holding it: a waiter that opened this file sees it is gone and retries
            os.remove(self.path)
        except FileNotFoundError:
            pass
        os.close(fd)

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self._release(self.fd)
            self.fd = None
