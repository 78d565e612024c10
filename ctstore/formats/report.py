"""The report format: an experiment's ``report.md``, ``results.json`` and plots (docs/design.md §2, §6).

A ``report`` artifact (written by ``ctstore run``) holds

* ``results.json``: the experiment's numbers as one JSON object (``claims``: the
  claim records of :mod:`ctstore.claims`; ``summary``; per-seed values);
* ``report.md``: the human-readable report (the manifest's ``report`` names it);
* PNG plots the report links to.

Reports are written through a :class:`~ctstore.location.Location` so that an
experiment on an object-store workspace publishes its files there. Plots are
drawn by matplotlib into bytes (:func:`write_figure`).
"""

from __future__ import annotations

import json

from ..errors import CtstoreError
from ..location import Location
from . import require, write_file

__all__ = ["RESULTS", "REPORT", "write_results", "read_results", "write_text", "read_report", "write_figure",
           "verdict_counts"]

RESULTS = "results.json"
REPORT = "report.md"


def _location(report) -> Location:
    if isinstance(report, Location):
        return report
    require(report, "report", expected="an experiment report")
    return report.location


def write_results(where: Location, results: dict) -> None:
    """``results.json`` in the report directory ``where`` (floats of numpy types become plain floats)."""
    write_file(where.child(RESULTS), json.dumps(results, indent=2, sort_keys=True, default=float).encode())


def read_results(report) -> dict:
    """The ``results.json`` of a report artifact (or of the report directory at a Location)."""
    where = _location(report).child(RESULTS)
    try:
        results = json.loads(where.read_bytes())
    except FileNotFoundError:
        raise CtstoreError(f"{where}: results not found") from None
    except ValueError as exc:
        raise CtstoreError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(results, dict):
        raise CtstoreError(f"{where}: not a JSON object")
    return results


def write_text(where: Location, text: str) -> None:
    """A text file (``report.md``) at ``where``."""
    write_file(where, text.encode("utf-8"))


def read_report(report) -> str:
    """The markdown of a report artifact."""
    name = report.manifest.get("report", REPORT) if not isinstance(report, Location) else REPORT
    return _location(report).child(name).read_bytes().decode("utf-8")


def write_figure(where: Location, figure) -> None:
    """Save a matplotlib ``figure`` as PNG at ``where``."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_file(where, buffer.getvalue())


def verdict_counts(report) -> str:
    """'2 consistent, 1 inconclusive' from the claims of a report's results.json (for ``ls``)."""
    try:
        claims = read_results(report).get("claims", [])
    except (CtstoreError, OSError):
        return "no results.json"
    counts: dict[str, int] = {}
    for row in claims:  # rows are claim records (dicts); reports before the claims registry wrote lists
        verdict = row.get("verdict") if isinstance(row, dict) else row[-1] if isinstance(row, list) and row else None
        if isinstance(verdict, str):
            counts[verdict] = counts.get(verdict, 0) + 1
    return ", ".join(f"{n} {v}" for v, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "no claims"
