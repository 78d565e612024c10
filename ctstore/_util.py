"""Small helpers shared by every stage: errors, size parsing, logging to stderr.

Everything a stage prints for humans goes to stderr through :func:`log`, so that
``--json`` can keep stdout for the one JSON manifest a script reads.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import contextmanager

from dask.utils import format_bytes, parse_bytes

__all__ = [
    "CtstoreError",
    "format_bytes",
    "log",
    "parse_bytes",
    "parse_count",
    "parse_memory",
    "stopwatch",
    "canonical_json",
    "one_line",
    "write_error",
    "number_flag",
    "text_flag",
]


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
    room = ""
    probe = path.rstrip("/")
    while probe and not os.path.isdir(probe):
        probe = os.path.dirname(probe)
    try:
        room = f"; {format_bytes(shutil.disk_usage(probe or '.').free)} free on that disk"
    except OSError:
        pass
    return WriteError(f"{one_line(path)}: cannot write {what} ({one_line(_reason(exc))}{room})")


_QUIET = False


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = quiet


def log(*parts: object) -> None:
    """Print a human-readable line to stderr (never stdout)."""
    if not _QUIET:
        print(*parts, file=sys.stderr, flush=True)


def progress_disabled() -> bool:
    return _QUIET or os.environ.get("CTSTORE_NO_PROGRESS") == "1"


_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_count(text: str | int) -> int:
    """Parse a count such as ``200M``, ``1.5G``, ``4096`` or ``10_000`` into an int.

    >>> parse_count("200M")
    200000000
    """
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().replace("_", "")
    suffix = s[-1:] if s[-1:] in _SUFFIXES and s[-1:] != "" else ""
    number = s[: len(s) - len(suffix)]
    try:
        value = float(number) * _SUFFIXES[suffix]
    except ValueError:
        raise CtstoreError(f"not a count: {one_line(repr(text))} (use e.g. 4096, 200K, 200M)") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise CtstoreError(f"not a count: {one_line(repr(text))} (use e.g. 4096, 200K, 200M)")
    if value < 0 or value != int(value):
        raise CtstoreError(f"not a whole non-negative count: {one_line(repr(text))}")
    return int(value)


def parse_memory(text: str | int) -> int:
    """Parse a memory budget such as ``"4GB"`` (dask conventions: GB = 10**9, GiB = 2**30)."""
    if isinstance(text, int):
        return text
    try:
        return int(parse_bytes(str(text)))
    except (ValueError, TypeError):
        raise CtstoreError(f"not a memory size: {one_line(repr(text))} (use e.g. 2GB, 512MiB)") from None


def number_flag(kind: type, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                high_open: bool = False, what: str | None = None):
    """An argparse ``type`` accepting a finite ``int``/``float`` within bounds (None: unbounded).

    >>> number_flag(int, 1)("3")
    3
    """
    import argparse
    import math

    def describe() -> str:
        if what:
            return what
        name = "an integer" if kind is int else "a number"
        if low is not None and high is not None:
            return f"{name} in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        if low is not None:
            if low == 0:
                return f"{'a positive' if low_open else 'a non-negative'} {name.split(' ', 1)[1]}"
            return f"{name} {'>' if low_open else '>='} {low:g}"
        return f"{'a finite number' if kind is float else name}"

    def convert(text: str):
        try:
            value = kind(text.replace("_", "")) if kind is int else float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {describe()}, not {one_line(repr(text))}") from None
        bad = kind is float and not math.isfinite(value)
        if low is not None:
            bad |= value <= low if low_open else value < low
        if high is not None:
            bad |= value >= high if high_open else value > high
        if bad:
            raise argparse.ArgumentTypeError(f"must be {describe()}, not {one_line(repr(text))}")
        return value

    convert.__name__ = kind.__name__
    return convert


def text_flag(parse, what: str, minimum: int | None = None, allowed: tuple = ()):
    """An argparse ``type`` that checks a size/count string with ``parse`` (e.g. :func:`parse_count`)
    and returns it unchanged (the stage parses it again)."""
    import argparse

    def convert(text: str):
        if text in allowed:
            return text
        try:
            value = parse(text)
        except CtstoreError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, not {one_line(repr(text))}")
        return text

    convert.__name__ = "str"
    return convert


def canonical_json(obj: object) -> str:
    """JSON with sorted keys and no whitespace: the input of every fingerprint."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@contextmanager
def stopwatch(timings: dict, name: str):
    """Add the wall seconds spent in the block to ``timings[name]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - start, 3)


def save_npy(fs, path: str, array) -> None:
    """Write a ``.npy`` file through an fsspec filesystem (never pickled)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    with fs.open(path, "wb") as f:
        f.write(buf.getvalue())


def load_npy(fs, path: str):
    import io

    import numpy as np

    with fs.open(path, "rb") as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


PROGRESS_LINE_SECONDS = 15.0  # at most one progress line this often when stderr is not a terminal
PROGRESS_LINE_MAX_SECONDS = 600.0  # ... and at least this often once the gap has grown


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def progress(**kwargs):
    """Progress on stderr: a tqdm bar on a terminal, sparse log lines elsewhere.

    On a terminal the bar redraws at most twice a second. When stderr is a file,
    a pipe or CI (``nohup``, ``2> log``), redrawing a bar writes every update as a
    new ``\r`` line; then :class:`LineProgress` prints at most one line every
    ``PROGRESS_LINE_SECONDS`` (the gap grows to a tenth of the elapsed time, up to
    ``PROGRESS_LINE_MAX_SECONDS``, so a slow or long phase stays a few dozen lines)
    and, for a phase that lasted that long, one line when it ends.
    ``CTSTORE_NO_PROGRESS=1`` or ``-q`` turn both off.
    """
    kwargs.setdefault("disable", progress_disabled())
    if not stderr_is_terminal():
        return LineProgress(**kwargs)
    from tqdm import tqdm

    return tqdm(file=sys.stderr, dynamic_ncols=True, mininterval=0.5, **kwargs)


class LineProgress:
    """The part of tqdm's interface ctstore uses, printing plain lines at a bounded rate."""

    def __init__(self, total=None, desc: str = "", unit: str = "it", unit_scale: bool = False,
                 initial: int = 0, disable: bool = False, interval: float | None = None, **_ignored):
        self.total, self.desc, self.unit, self.unit_scale = total, desc or "progress", unit, unit_scale
        self.n, self.initial, self.disable = initial, initial, disable
        self.interval = PROGRESS_LINE_SECONDS if interval is None else interval
        self.postfix = ""
        self.start = self._last = time.monotonic()
        self.lines = 0
        self.closed = False

    @property
    def format_dict(self) -> dict:
        return {"n": self.n, "total": self.total, "elapsed": time.monotonic() - self.start}

    def _amount(self, x) -> str:
        if self.unit_scale:
            from tqdm import tqdm

            return tqdm.format_sizeof(x)
        return str(x)

    def _line(self, done: bool = False) -> str:
        elapsed = time.monotonic() - self.start
        of = f"/{self._amount(self.total)}" if self.total else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {'done ' if done else ''}{self._amount(self.n)}{of} {self.unit}{pct}",
                 f"{elapsed:.1f} s", f"{self._amount(round(rate, 1))} {self.unit}/s"]
        return ", ".join(parts + ([self.postfix] if self.postfix else []))

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        gap = max(self.interval, min((now - self.start) / 10, PROGRESS_LINE_MAX_SECONDS))
        if not self.disable and now - self._last >= gap and (self.total is None or self.n < self.total):
            self._last = now
            self.lines += 1
            log(self._line())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # a phase shorter than one interval is covered by the stage's own log line
        long = self.lines > 0 or time.monotonic() - self.start >= self.interval
        if not self.disable and self.n > self.initial and long:
            log(self._line(done=True))

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
