"""Sizes and counts as users write them (``32M``, ``2GB``) and parse-time checks of numeric flags."""

from __future__ import annotations

from .errors import CtstoreError, one_line

__all__ = ["COUNT", "FRACTION", "INT_MAX", "MEMORY", "NON_NEGATIVE", "POSITIVE", "format_bytes", "number_flag",
           "parse_bytes", "parse_count", "parse_memory", "text_flag"]


def format_bytes(n: int) -> str:
    """``n`` bytes in binary units, as dask writes them (``1.21 kiB``, ``11.77 MiB``; a unit from 0.9 of it on).

    Written here rather than imported from dask so that the command line starts without importing dask.
    """
    for exponent, unit in ((50, "PiB"), (40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "kiB")):
        if n >= 0.9 * 2 ** exponent:
            return f"{n / 2 ** exponent:.2f} {unit}"
    return f"{n} B"


# dask.utils.byte_sizes: decimal units are powers of 1000, binary ones (kiB, Ki, ...) of 1024
_BYTE_SIZES = {"": 1, "b": 1}
for _i, _prefix in enumerate("kmgtp", start=1):
    _BYTE_SIZES |= {_prefix: 1000 ** _i, f"{_prefix}b": 1000 ** _i, f"{_prefix}i": 1024 ** _i,
                    f"{_prefix}ib": 1024 ** _i}


def parse_bytes(text: str | int | float) -> int:
    """dask's ``parse_bytes`` (``"4GB"`` = 4·10⁹, ``"4GiB"`` = 4·2³⁰; ``"1e6 kB"``, ``"MB"`` = 1 MB).

    The same rules as ``dask.utils.parse_bytes`` (tests/test_units.py compares the
    two on a table of cases), written here because importing dask costs every
    command that takes ``--memory`` about 0.1 s of start-up (``tokenize`` among them).
    Raises ValueError for text it cannot read, as dask does.
    """
    if isinstance(text, (int, float)):
        return int(text)
    s = text.replace(" ", "")
    if not any(char.isdigit() for char in s):
        s = f"1{s}"
    index = len(s)
    while index > 0 and s[index - 1].isalpha():
        index -= 1
    prefix, suffix = s[:index], s[index:]
    try:
        number = float(prefix)
    except ValueError as exc:
        raise ValueError(f"Could not interpret '{prefix}' as a number") from exc
    try:
        multiplier = _BYTE_SIZES[suffix.lower()]
    except KeyError as exc:
        raise ValueError(f"Could not interpret '{suffix}' as a byte unit") from exc
    return int(number * multiplier)


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


INT_MAX = 2**63 - 1  # every integer parameter fits int64 (numpy, torch, TOML)


def _shown(value) -> str:
    return one_line(repr(value))


def number_flag(kind: type, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                high_open: bool = False, what: str | None = None):
    """The check of a numeric parameter: a finite ``int``/``float`` within bounds (None: unbounded).

    One function serves the command line and the configuration files: it takes the
    flag's text (``"3"``) or a value (``3`` from TOML or Python) and returns the value,
    or raises ``argparse.ArgumentTypeError`` with ``must be ..., not ...``. A bool is
    not a number and a float is not an int (``1.5`` is refused, not rounded); an
    int fits int64.

    >>> number_flag(int, 1)("3"), number_flag(int, 1)(3)
    (3, 3)
    """
    import argparse
    import math
    import numbers

    top = INT_MAX if kind is int and high is None else high

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

    def refuse(value):
        bound = f" (at most {top})" if high is None and kind is int and isinstance(value, int) and value > top else ""
        return argparse.ArgumentTypeError(f"must be {describe()}{bound}, not {_shown(value)}")

    def convert(value):
        given = value
        if isinstance(value, str):
            try:
                value = kind(value.replace("_", "")) if kind is int else float(value)
            except (TypeError, ValueError):
                raise refuse(value) from None
        elif isinstance(value, bool) or not isinstance(value, numbers.Integral if kind is int else numbers.Real):
            raise refuse(value)
        else:  # numpy scalars too
            value = kind(value)
        bad = kind is float and not math.isfinite(value)
        if low is not None:
            bad |= value <= low if low_open else value < low
        if top is not None:
            bad |= value >= top if high_open and top is high else value > top
        if bad:
            raise refuse(given)
        return value

    convert.__name__ = kind.__name__
    return convert


def text_flag(parse, what: str, minimum: int | None = None, allowed: tuple = (), *, parsed: bool = False,
              maximum: int = INT_MAX):
    """The check of a size/count parameter: text parsed with ``parse`` (e.g. :func:`parse_count`), or an int.

    Returns the value unchanged (the stage parses it again), or, with ``parsed``,
    the parsed value; ``allowed`` words (``"auto"``) pass as they are. Like
    :func:`number_flag`, it takes the flag's text or a value from a file.
    """
    import argparse
    import numbers

    def convert(value):
        if value in allowed and isinstance(value, str):
            return value
        if isinstance(value, bool) or not isinstance(value, (str, numbers.Integral)):
            raise argparse.ArgumentTypeError(f"must be {what}, not {_shown(value)}")
        try:
            number = parse(value if isinstance(value, str) else int(value))
        except CtstoreError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if (minimum is not None and number < minimum) or number > maximum:
            raise argparse.ArgumentTypeError(f"must be {what}, not {_shown(value)}")
        return number if parsed else value

    convert.__name__ = "str"
    return convert


# the argparse types most flags use
POSITIVE = number_flag(int, 1, what="a positive integer")
NON_NEGATIVE = number_flag(int, 0, what="a non-negative integer")
COUNT = text_flag(parse_count, "a positive count such as 4096, 200K or 32M", minimum=1, parsed=True)
MEMORY = text_flag(parse_memory, "a memory size such as 2GB or 512MiB", minimum=1)
FRACTION = number_flag(float, 0, 1, low_open=True, high_open=True, what="a number in (0, 1)")
