"""Which files a corpus is, for ``tokenize``: inputs expanded, de-duplicated, refused by type, hashed.

Inputs are files, directories (searched recursively) and glob patterns. They are
de-duplicated by file identity (device and inode, so a file reached through
symbolic links or hard links is read once); directory symlinks are followed, but
never into a directory already visited (no loops). Anything that is not a regular
file (FIFOs, devices, sockets) is skipped inside directories and refused when
named directly, by type and before it is opened (:func:`_open_regular`).

Each source file's content hash enters the fingerprint (:func:`_file_identity`);
:class:`_HashedFile` hashes the raw bytes again as a reader consumes them.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import stat

from ..errors import CtstoreError
from ..hfdata import hf_dataset_files
from ..log import log
from .decode import READ_BLOCK


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files named by paths, directories and glob patterns, sorted, without duplicates.

    Duplicates are found by file identity (device, inode), not by path string;
    directory symlinks are followed unless they lead back into a directory
    already visited; non-regular files are skipped (inside directories and
    patterns, with a log line) or refused (when named directly).
    """
    files: list[str] = []
    seen: set[tuple[int, int]] = set()

    def add(paths) -> None:
        for path, st in paths:
            key = (st.st_dev, st.st_ino)
            if key not in seen:
                seen.add(key)
                files.append(path)

    for item in inputs:
        st = _stat_or_none(item)
        if st is not None and stat.S_ISDIR(st.st_mode) and (hf_files := hf_dataset_files(item)) is not None:
            add([(p, os.stat(p)) for p in hf_files])  # a Hugging Face datasets directory (ctstore.hfdata)
        elif st is not None and stat.S_ISDIR(st.st_mode):
            found = sorted(_walk_files(item))
            if not found:
                raise CtstoreError(f"{item}: directory contains no files")
            add(found)
        elif any(ch in item for ch in "*?["):
            found = sorted(_glob_files(item))
            if not found:
                raise CtstoreError(f"{item}: pattern matches no files")
            add(found)
        elif st is not None:
            if not stat.S_ISREG(st.st_mode):
                raise CtstoreError(f"{item}: not a regular file ({_file_kind(st.st_mode)}); refusing to read it")
            add([(item, st)])
        elif os.path.lexists(item):
            raise CtstoreError(f"{item}: broken symbolic link")
        else:
            raise CtstoreError(f"{item}: no such file or directory")
    return files


def _stat_or_none(path: str):
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise CtstoreError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _skip(path: str, why: str) -> None:
    log(f"tokenize: skipping {path!r}: {why}")


def _walk(top: str, visited: set):
    """Yield ``(path, stat, is_dir)`` below ``top`` (symlinks followed, each directory entered once)."""
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError as exc:
        raise CtstoreError(f"{top}: cannot list directory ({exc.strerror or exc})") from None
    for entry in entries:
        path = os.path.join(top, entry.name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            _skip(path, "broken symbolic link")
            continue
        except OSError as exc:
            if exc.errno == getattr(os, "ELOOP", -1) or isinstance(exc, PermissionError):
                _skip(path, exc.strerror or str(exc))
                continue
            raise CtstoreError(f"{path}: cannot read ({exc.strerror or exc})") from None
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in visited:
                if entry.is_symlink():
                    _skip(path, "symbolic link to a directory already visited (not followed)")
                continue
            visited.add(key)
            yield path, st, True
            yield from _walk(path, visited)
        else:
            yield path, st, False


def _walk_files(top: str):
    """Regular files below a directory given as input (names starting with '.' left out)."""
    st = os.stat(top)
    for path, st, is_dir in _walk(top, {(st.st_dev, st.st_ino)}):
        if is_dir or os.path.basename(path).startswith("."):
            continue
        if stat.S_ISREG(st.st_mode):
            yield path, st
        else:
            _skip(path, f"{_file_kind(st.st_mode)}, not a regular file")


def _glob_files(pattern: str):
    """Regular files matching a glob pattern; ``**`` is walked without following symlink loops."""
    if "**" not in pattern:
        candidates = ((p, _stat_or_none(p)) for p in sorted(glob.glob(pattern)))
    else:
        parts = pattern.split(os.sep)
        fixed = 0
        while fixed < len(parts) - 1 and not any(ch in parts[fixed] for ch in "*?["):
            fixed += 1
        base = os.sep.join(parts[:fixed]) or ("." if not pattern.startswith(os.sep) else os.sep)
        if pattern.startswith(os.sep) and fixed == 1:
            base = os.sep
        rest = parts[fixed:]
        st = _stat_or_none(base)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return
        prefix = "" if fixed == 0 and not pattern.startswith(os.sep) else base
        candidates = []
        for path, st, _ in _walk(base, {(st.st_dev, st.st_ino)}):
            rel = os.path.relpath(path, base).split(os.sep)
            if _glob_match(rest, rel):
                candidates.append((os.path.join(prefix, *rel) if prefix else os.path.join(*rel), st))
    for path, st in candidates:
        if st is None:
            continue
        if stat.S_ISREG(st.st_mode):
            yield path, st
        elif not stat.S_ISDIR(st.st_mode):
            _skip(path, f"{_file_kind(st.st_mode)}, not a regular file")


def _glob_match(pattern: list[str], parts: list[str]) -> bool:
    """Match path components against glob components (``**``: zero or more directories), like :mod:`glob`."""
    if not pattern:
        return not parts
    head = pattern[0]
    if head == "**":
        if _glob_match(pattern[1:], parts):
            return True
        return bool(parts) and not parts[0].startswith(".") and _glob_match(pattern, parts[1:])
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and _glob_match(pattern[1:], parts[1:])


def _open_regular(path: str):
    """Open a source file for reading, refusing anything but a regular file *before* reading (never blocks)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise CtstoreError(f"{path}: cannot open ({exc.strerror or exc})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise CtstoreError(f"{path}: not a regular file ({_file_kind(st.st_mode)}); refusing to read it")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), st


class _HashedFile:
    """The raw bytes of a source file, hashed as they are read.

    Comparing the hash of what was actually read with the hash that entered the
    fingerprint catches a file that changed in between (or while being read).
    """

    mode = "rb"

    def __init__(self, path: str):
        self.path = path
        self._f, self.stat = _open_regular(path)
        self._hash = hashlib.blake2b(digest_size=16)
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._f.read(n)
        except OSError as exc:
            raise CtstoreError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
        self._hash.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._f.closed

    def close(self) -> None:
        self._f.close()

    def finish(self) -> dict:
        """Read (and hash) whatever is left, close, and return the identity of everything read."""
        while self.read(READ_BLOCK):
            pass
        self.close()
        return {"blake2b": self._hash.hexdigest(), "bytes": self.size}


def _file_identity(path: str, stats: dict | None = None) -> dict:
    """Content hash of a source file: the fingerprint never depends on paths or mtimes.

    ``stats`` (optional) receives the file's ``os.stat`` result taken when it was opened.
    """
    source = _HashedFile(path)
    try:
        if stats is not None:
            stats[path] = source.stat
        return source.finish()
    finally:
        source.close()
