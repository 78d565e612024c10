"""Human-facing output: log lines, progress bars (lines off a terminal), stopwatches.

Everything a stage prints for humans goes to stderr through :func:`log`, so that
``--json`` can keep stdout for the one JSON manifest a script reads.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

__all__ = ["LineProgress", "log", "progress", "progress_disabled", "set_quiet", "stderr_is_terminal", "stopwatch"]


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


@contextmanager
def stopwatch(timings: dict, name: str):
    """Add the wall seconds spent in the block to ``timings[name]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - start, 3)
