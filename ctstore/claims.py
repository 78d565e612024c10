"""The claims registry and the verdict of a measurement against a claim.

Every claim a pipeline tests lives in ``claims.toml`` (shipped with the package):
the paper, the section, the claim in the paper's own words, the paper's number,
the comparison and its threshold or tolerance, and whether it is ``measured`` or
holds ``by construction``. A pipeline measures each of its claims
(:func:`paired` for per-seed values, :func:`exact` for a value that is
deterministic given the corpus, :func:`construction` for a definition) and prints
them with :func:`claims_table`.

Verdicts (:func:`judge`)
------------------------
``consistent``      the 95% interval lies entirely on the claim's side of the threshold
                    (or inside the tolerance band of a ``within`` claim);
``inconsistent``    it lies entirely on the other side (or outside the band);
``inconclusive``    it covers the threshold or a band edge, or there are fewer than two
                    seeds (the interval is undefined), or a value is missing;
``by construction`` the row holds by definition or by how ctstore builds the object;
                    its value is printed, never judged;
``holds for noise`` consistent, but the same measurement on a null model (random matrices of
                    the same shape and scale, or a randomly initialised model) is
                    consistent too: the claim's test cannot tell the paper's
                    object from noise (:func:`with_null`; the null's value is printed).

The interval of per-seed values is the Student t interval of their mean,
``mean ± t(0.975, n−1)·s/√n``; for paired designs the values are the per-seed
differences arm − baseline, so seed-to-seed variation common to both cancels.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import numpy as np

__all__ = ["Claim", "Measurement", "load_claims", "claims_for", "t_interval", "judge", "paired", "exact",
           "construction", "missing", "with_null", "claims_table", "readings_list", "VERDICTS"]

VERDICTS = ("consistent", "inconsistent", "inconclusive", "by construction", "holds for noise")
COMPARISONS = ("<", "<=", ">", ">=", "within")
KINDS = ("measured", "by construction")


@dataclass(frozen=True)
class Claim:
    id: str
    pipelines: tuple
    paper: str
    section: str
    claim: str
    paper_value: str
    kind: str
    measure: str
    unit: str = ""
    comparison: str | None = None
    threshold: float | None = None
    tolerance: float | None = None
    paper_number: float | None = None
    reading: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"claim {self.id}: kind must be one of {KINDS}, not {self.kind!r}")
        if self.kind == "measured":
            if self.comparison not in COMPARISONS or self.threshold is None:
                raise ValueError(f"claim {self.id}: a measured claim needs a comparison in {COMPARISONS} "
                                 "and a threshold")
            if self.comparison == "within" and not (self.tolerance and self.tolerance > 0):
                raise ValueError(f"claim {self.id}: 'within' needs a positive tolerance")

    @property
    def source(self) -> str:
        return f"{self.paper} {self.section}"

    def criterion(self) -> str:
        """The tested condition in words, e.g. ``≤ 0.15`` or ``2 ± 0.1``."""
        if self.comparison is None:
            return "—"
        unit = f" ({self.unit})" if self.unit else ""
        if self.comparison == "within":
            return f"{_num(self.threshold)} ± {_num(self.tolerance)}{unit}"
        return f"{self.comparison.replace('<=', '≤').replace('>=', '≥')} {_num(self.threshold)}{unit}"


@lru_cache(maxsize=1)
def load_claims() -> dict[str, Claim]:
    """``{id: Claim}`` from the packaged ``claims.toml``, in file order."""
    with resources.files("ctstore").joinpath("claims.toml").open("rb") as f:
        rows = tomllib.load(f)["claim"]
    out = {}
    for row in rows:
        c = Claim(**{**row, "pipelines": tuple(row["pipelines"])})
        if c.id in out:
            raise ValueError(f"claims.toml: duplicate id {c.id}")
        out[c.id] = c
    return out


def claims_for(pipeline: str) -> list[Claim]:
    return [c for c in load_claims().values() if pipeline in c.pipelines]


def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student t interval of the mean of ``values`` (at least two)."""
    from scipy.stats import t

    x = np.asarray(values, np.float64)
    if x.size < 2:
        raise ValueError("t_interval needs at least two values")
    mean = float(x.mean())
    half = float(t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def judge(comparison: str, threshold: float, low: float, high: float, tolerance: float | None = None) -> str:
    """Verdict of an interval ``[low, high]`` against a claim; touching the threshold is inconclusive."""
    if comparison in ("<", "<="):
        return "consistent" if high < threshold else "inconsistent" if low > threshold else "inconclusive"
    if comparison in (">", ">="):
        return "consistent" if low > threshold else "inconsistent" if high < threshold else "inconclusive"
    if comparison == "within":
        lo_edge, hi_edge = threshold - tolerance, threshold + tolerance
        if lo_edge < low and high < hi_edge:
            return "consistent"
        return "inconsistent" if high < lo_edge or low > hi_edge else "inconclusive"
    raise ValueError(f"unknown comparison {comparison!r}")


@dataclass
class Measurement:
    """One claim row: the claim, its measured value and interval, the verdict and a note."""
    claim: Claim
    value: float | None
    low: float | None = None
    high: float | None = None
    n: int | None = None
    interval: str = "95% t"  # what [low, high] is: "95% t", "exact", "range over V", ...
    verdict: str = "inconclusive"
    note: str = ""
    values: list = field(default_factory=list)
    null: "Measurement | None" = None  # the same measurement on a null model (with_null)
    null_label: str = ""

    def to_dict(self) -> dict:
        c = self.claim
        return {"id": c.id, "paper": c.paper, "section": c.section, "claim": c.claim, "paper_value": c.paper_value,
                "kind": c.kind, "comparison": c.comparison, "threshold": c.threshold, "tolerance": c.tolerance,
                "value": self.value, "low": self.low, "high": self.high, "n": self.n, "interval": self.interval,
                "values": self.values, "verdict": self.verdict, "note": self.note,
                **({"null": {"model": self.null_label, "value": self.null.value, "low": self.null.low,
                             "high": self.null.high, "n": self.null.n, "verdict": self.null.verdict}}
                   if self.null is not None else {})}


def _measurement_from_dict(d: dict) -> "Measurement":
    """A row back from its ``to_dict`` (results.json), claim text from the registry."""
    m = Measurement(_claim(d["id"]), d["value"], d.get("low"), d.get("high"), d.get("n"), d.get("interval", "95% t"),
                    d["verdict"], d.get("note", ""), d.get("values", []))
    if d.get("null"):
        n = d["null"]
        m.null = Measurement(m.claim, n["value"], n.get("low"), n.get("high"), n.get("n"), verdict=n["verdict"])
        m.null_label = n["model"]
    return m


Measurement.from_dict = staticmethod(_measurement_from_dict)


def _claim(claim) -> Claim:
    return load_claims()[claim] if isinstance(claim, str) else claim


def paired(claim, values, note: str = "", censored=None) -> Measurement:
    """A claim measured once per seed (paired differences arm − baseline where the claim compares arms).

    ``None`` entries (a seed whose value could not be measured) make the row inconclusive.
    ``censored[i]`` marks ``values[i]`` as a lower bound (the true value is at least it, e.g. an arm
    that never reached a target within the schedule: steps ≥ the schedule length). Raising a value can
    only move the interval up, so for a ``<``/``<=`` claim an ``inconsistent`` verdict stands, a
    ``consistent`` one becomes ``inconclusive``, and all seeds censored at or above the threshold is
    ``inconsistent``.
    """
    c = _claim(claim)
    vals = list(values)
    censored = list(censored) if censored is not None else [False] * len(vals)
    if any(censored):
        m = _paired_censored(c, vals, censored, note)
        if m is not None:
            return m
    known = [float(v) for v in vals if v is not None]
    notes = [note] if note else []
    if len(known) < len(vals):
        notes.append(f"{len(vals) - len(known)} of {len(vals)} seed(s) not measurable")
    m = Measurement(c, float(np.mean(known)) if known else None, n=len(known), values=[_r(v) for v in vals])
    if c.kind == "by construction":
        m.verdict = "by construction"
    elif len(known) < 2:
        m.verdict = "inconclusive"
        notes.append(f"{len(known)} seed{'s' if len(known) != 1 else ''}: no interval; run ≥ 2 (experiment.seeds)")
    else:
        m.value, m.low, m.high = t_interval(known)
        if len(known) < len(vals):
            m.verdict = "inconclusive"
        else:
            m.verdict = judge(c.comparison, c.threshold, m.low, m.high, c.tolerance)
    m.note = "; ".join(notes)
    return m


def _paired_censored(c: Claim, vals: list, censored: list, note: str) -> Measurement | None:
    n_cens = sum(censored)
    notes = [note] if note else []
    notes.append(f"{n_cens} of {len(vals)} seed(s) censored (value is a lower bound)")
    if c.kind != "measured" or c.comparison not in ("<", "<=") or None in vals:
        return None
    m = paired(c, vals, note="; ".join(notes))
    if n_cens == len(vals) >= 2 and min(vals) >= c.threshold:
        m.verdict = "inconsistent"
    elif m.verdict == "consistent":
        m.verdict = "inconclusive"
    return m


def exact(claim, value: float, low: float | None = None, high: float | None = None, interval: str = "exact",
          note: str = "", kind: str | None = None) -> Measurement:
    """A value that is deterministic given the corpus (no seed enters), optionally with a range.

    The verdict compares the whole range ``[low, high]`` (default: the value itself) with the claim.
    ``kind`` overrides the registry's kind, e.g. a pairing that is by construction only for circulant K0.
    """
    c = _claim(claim)
    low = value if low is None else low
    high = value if high is None else high
    m = Measurement(c, _r(value), _r(low), _r(high), n=None, interval=interval, note=note)
    if (kind or c.kind) == "by construction":
        m.verdict = "by construction"
    elif value is None or not np.isfinite([value, low, high]).all():
        m.verdict, m.note = "inconclusive", "; ".join(x for x in (note, "not measurable") if x)
    else:
        m.verdict = judge(c.comparison, c.threshold, low, high, c.tolerance)
    return m


def construction(claim, value=None, note: str = "") -> Measurement:
    """A row that holds by construction: its value is shown, never judged."""
    c = _claim(claim)
    return Measurement(c, _r(value) if isinstance(value, (int, float)) else value, interval="",
                       verdict="by construction", note=note)


def missing(claim, reason: str) -> Measurement:
    """A claim this run could not measure (an arm not run, a value never reached)."""
    c = _claim(claim)
    return Measurement(c, None, verdict="by construction" if c.kind == "by construction" else "inconclusive",
                       note=reason)


def with_null(m: Measurement, null: Measurement, label: str) -> Measurement:
    """Attach the same measurement on a null model; ``consistent`` for both becomes ``holds for noise``."""
    m.null, m.null_label = null, label
    if m.verdict == "consistent" and null.verdict == "consistent":
        m.verdict = "holds for noise"
    return m


def _r(x):
    return None if x is None else float(x)


def _num(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.4g}"


def format_measured(m: Measurement) -> str:
    if m.value is None:
        return "—"
    if isinstance(m.value, str):
        return m.value
    if m.low is not None and m.high is not None and (m.low != m.value or m.high != m.value):
        if m.interval == "95% t":
            text = f"{_num(m.value)} [{_num(m.low)}, {_num(m.high)}] (95% CI, {m.n} seeds)"
        else:
            text = f"{_num(m.value)} [{_num(m.low)}, {_num(m.high)}] ({m.interval})"
    else:
        text = _num(m.value)
        if m.n is not None:
            text += f" ({m.n} seed{'s' if m.n != 1 else ''})"
        elif m.interval:
            text += f" ({m.interval})"
    return text


def claims_table(measurements: list[Measurement]) -> str:
    """Markdown: claim (paper's words), paper's value, test, measured ± 95% interval (n), verdict, note."""
    from .report import markdown_table

    rows = [[f"`{m.claim.id}`", f"{m.claim.source}: {m.claim.claim}", m.claim.paper_value,
             m.claim.criterion() if m.verdict != "by construction" else "—", format_measured(m), m.verdict,
             f"{format_measured(m.null)} ({m.null_label}: {m.null.verdict})" if m.null is not None else "—",
             m.note or "—"] for m in measurements]
    return markdown_table(["id", "claim (paper's terms)", "paper's value", "test", "measured", "verdict",
                           "null model", "note"], rows)


def readings_list(measurements: list[Measurement]) -> str:
    """What each row measures and the reading chosen where the paper is ambiguous."""
    lines = []
    for m in measurements:
        c = m.claim
        lines.append(f"- `{c.id}`: {c.measure}." + (f" Reading: {c.reading}." if c.reading else ""))
    return "\n".join(lines)
