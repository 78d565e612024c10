"""Writing experiment reports: a ``report`` artifact with report.md, results.json and PNG plots.

The files are written through the report format (:mod:`ctstore.formats.report`)
at the artifact's :class:`~ctstore.location.Location`. An experiment renders its
``report.md`` and plots with ordinary file APIs (matplotlib saves to a path)
into a directory ``write`` receives: the artifact's own directory on a local
workspace, a local staging directory on a remote one, whose files are then
copied into the artifact before the manifest is published.
"""

from __future__ import annotations

import json
import tempfile

from .stage import canonical_json, fingerprint
from .formats import copy_directory
from .formats.report import REPORT, write_results
from .workspace import build_artifact

__all__ = ["markdown_table", "publish_report", "plot_curves"]


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(x):
        if isinstance(x, float):
            return f"{x:.4g}"
        return "—" if x is None else str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_curves(path: str, curves: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str,
                logy: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label, marker="o", markersize=2.5, linewidth=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def publish_report(ws, experiment: str, config: dict, inputs: dict, write, force: bool = False,
                   version: int = 1):
    """Build the report artifact; ``write(path) -> results dict`` writes report.md and plots.

    ``version`` enters the fingerprint: bump it when an experiment's analysis changes, so an old
    report is not reused for new code.
    """
    fp = fingerprint(f"run/{experiment}", version, {"config": json.loads(canonical_json(config))}, inputs)

    def build(path: str) -> dict:
        location = ws.artifact_location("report", fp)
        if ws.is_local:
            results = write(path)
        else:
            with tempfile.TemporaryDirectory(prefix="ctstore-report-") as staging:
                results = write(staging)
                copy_directory(staging, location)
        write_results(location, results)
        return {"format_version": 1, "params": {"experiment": experiment, "config": config}, "inputs": inputs,
                "report": REPORT, "summary": results.get("summary", {})}

    return build_artifact(ws, "report", fp, build, force=force)[0]

