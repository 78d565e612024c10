"""ctstore's error types and the one-line form of every message a user sees.

A :class:`CtstoreError` is a problem the user can fix; the CLI prints it as
``ctstore: error: <message>`` and exits with status 2.
"""

from __future__ import annotations

import os
import shutil

__all__ = ["CtstoreError", "WriteError", "one_line", "write_error"]


class CtstoreError(Exception):
    """An error the user can fix: bad input, bad parameters, no space.

    The CLI prints ``ctstore: error: <message>`` on one line and exits with
    status 2; the message must name the input and the problem.
    """


def one_line(text: object, limit: int = 1000) -> str:
    """``text`` made safe for a one-line message: control characters (newlines in file names) escaped."""
    s = str(text)
    if any(c < " " or c == "\x7f" for c in s):
        s = s.encode("unicode_escape", errors="backslashreplace").decode("ascii", errors="replace")
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _reason(exc: BaseException) -> str:
    """The OS reason of a failed write: ``strerror`` of an OSError, else the message inside a
    SafetensorError (``... message: "No space left on device" ...``), else its first line."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    if 'message: "' in text:
        return text.split('message: "', 1)[1].split('"', 1)[0]
    code = text.rsplit("(os error ", 1)[-1].rstrip(")") if "(os error " in text else ""
    if code.isdigit():  # safetensors: "... I/O error: No space left on device (os error 28)"
        return os.strerror(int(code))
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


class WriteError(CtstoreError):
    """A write failed (usually a full disk): the failed build removes everything it wrote."""


def write_error(path: str, what: str, exc: BaseException) -> "CtstoreError":
    """One-line error for a failed write, with the free space left there (a full disk is the usual cause).

    ``ctstore: error: <path>: cannot write <what> (<reason>; <N> free on that disk)``
    """
    from .units import format_bytes

    room = ""
    probe = path.rstrip("/")
    while probe and not os.path.isdir(probe):
        probe = os.path.dirname(probe)
    try:
        room = f"; {format_bytes(shutil.disk_usage(probe or '.').free)} free on that disk"
    except OSError:
        pass
    return WriteError(f"{one_line(path)}: cannot write {what} ({one_line(_reason(exc))}{room})")
