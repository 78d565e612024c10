"""Pieces shared by the paper experiments: corpus preparation, metrics, the claims section."""

from __future__ import annotations

import os

from ..claims import Measurement, claims_for, claims_table, missing, readings_list


def prepare(config: dict, ctx):
    """Tokens and counts of the pipeline's corpus.

    A pipeline that fine-tunes (it has an ``[sft]`` section) counts its training documents only, at SFT's
    validation fraction (``ctstore.split``), so no statistic it seeds from has seen validation text.
    """
    tokens = ctx.tokens(config["corpus"])
    count = dict(config.get("count", {}))
    if "sft" in config and "val_fraction" not in count:
        count["val_fraction"] = float(config["sft"].get("val_fraction", 0.1))
    counts = ctx.counts(tokens, count)
    return tokens, counts


def eval_curve(run, key: str = "val_loss") -> tuple[list, list]:
    """``(steps, values)`` of a run's evaluations (``val_loss`` or ``val_ppl``), step 0 included."""
    from ..formats.run import eval_curve as read_curve

    return read_curve(run, key)


def seeds_of(config: dict) -> list[int]:
    """``[experiment] seeds`` (model, SFT and randomized-SVD seeds; checked, default in experiments/config.py)."""
    return list(config["experiment"]["seeds"])


def claims_section(pipeline: str, measured: list[Measurement]) -> tuple[str, list[dict]]:
    """The report's claims section for ``pipeline``, in registry order, and its rows for results.json.

    Every registry claim of the pipeline gets a row: one the run did not measure is printed as
    ``inconclusive`` with the reason, so a report can never drop a claim silently.
    """
    by_id = {m.claim.id: m for m in measured}
    unknown = set(by_id) - {c.id for c in claims_for(pipeline)}
    if unknown:
        raise ValueError(f"{pipeline}: measured claims not in the registry for it: {sorted(unknown)}")
    rows = [by_id.get(c.id) or missing(c, "not measured in this run") for c in claims_for(pipeline)]
    text = ("## Claims beside measurements\n\n"
            "Claims as the papers state them (registry: `ctstore/claims.toml`). *measured*: the mean with its "
            "95% t interval over seeds (per-seed paired differences where arms are compared), or the exact value "
            "where no seed enters. A verdict is `inconclusive` when the interval touches the threshold or fewer "
            "than two seeds ran; `by construction` rows hold by definition and are not evidence.\n\n"
            + claims_table(rows) + "\n\n### What each row measures\n\n" + readings_list(rows))
    return text, [m.to_dict() for m in rows]


def write_report(path: str, title: str, intro: str, sections: list[str]) -> None:
    with open(os.path.join(path, "report.md"), "w") as f:
        f.write("\n\n".join([f"# {title}", intro, *sections]) + "\n")
