"""The run format: an SFT run's metrics, checkpoint and trained model (docs/design.md §2).

A ``run`` artifact holds

* ``metrics.jsonl``: one JSON object per line and step, in step order; a line
  with ``val_loss`` is an evaluation (step 0, every ``eval_every`` steps and the
  last step), the others carry the training loss, learning rate and throughput;
* ``checkpoint.safetensors``: what an interrupted run resumes from
  (:mod:`ctstore.sft.checkpoint`);
* ``model/``: the trained model, a model directory (:mod:`ctstore.formats.model`).

Everything goes through a :class:`~ctstore.location.Location`, so a run on
``memory://`` or S3 is read exactly like a local one. Readers of metrics call
:func:`read_metrics` (or :func:`eval_curve`), never ``open`` on a path.
"""

from __future__ import annotations

import json

from ..errors import CtstoreError
from ..location import Location
from . import require

__all__ = ["METRICS", "CHECKPOINT", "read_metrics", "eval_curve", "parse_metrics", "format_metrics",
           "write_metrics", "run_location"]

METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.safetensors"


def run_location(run) -> Location:
    """The directory of ``run``: a run artifact (of a format version this ctstore reads), a Location, or a path.

    An object with only a local ``path`` (a run directory outside a workspace) is read from that path.
    """
    if isinstance(run, Location):
        return run
    if isinstance(run, str):
        return Location.of(run)
    if hasattr(run, "kind") and hasattr(run, "workspace"):
        require(run, "run", expected="an SFT run")
        return run.location
    return Location.of(run.path)


def parse_metrics(text: str, *, strict: bool = True) -> list[dict]:
    """The records of a ``metrics.jsonl`` text; ``strict=False`` drops lines a kill cut short."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "step" not in row:
                raise ValueError("not a metrics record")
        except ValueError as exc:
            if strict:
                raise CtstoreError(f"{METRICS} line {number}: not a metrics record ({exc})") from None
            continue
        rows.append(row)
    return rows


def format_metrics(rows: list[dict]) -> bytes:
    """``rows`` as ``metrics.jsonl`` bytes (one object per line, newline-terminated)."""
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def read_metrics(run) -> list[dict]:
    """Every record of a run's ``metrics.jsonl`` (``run`` as in :func:`run_location`)."""
    where = run_location(run)
    try:
        text = where.child(METRICS).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise CtstoreError(f"{where.child(METRICS)}: metrics not found") from None
    return parse_metrics(text)


def write_metrics(where: Location, rows: list[dict]) -> None:
    """Write ``metrics.jsonl`` into the run directory ``where`` (replacing it, through a rename)."""
    where.fs.makedirs(where.path, exist_ok=True)
    where.child(METRICS).write_atomic(format_metrics(rows))


def eval_curve(run, key: str = "val_loss") -> tuple[list, list]:
    """``(steps, values)`` of a run's evaluations (``val_loss`` or ``val_ppl``), step 0 included."""
    evals = [r for r in read_metrics(run) if key in r]
    return [r["step"] for r in evals], [r[key] for r in evals]
