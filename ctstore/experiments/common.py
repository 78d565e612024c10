"""Pieces shared by the paper experiments: corpus preparation, metrics, claim tables."""

from __future__ import annotations

import json
import os

from ..report import markdown_table


def prepare(config: dict, ctx):
    tokens = ctx.tokens(config["corpus"])
    counts = ctx.counts(tokens, config.get("count", {}))
    return tokens, counts


def eval_curve(run) -> tuple[list, list]:
    with open(os.path.join(run.path, "metrics.jsonl")) as f:
        rows = [json.loads(x) for x in f]
    evals = [r for r in rows if "val_loss" in r]
    return [r["step"] for r in evals], [r["val_loss"] for r in evals]


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("supported" if ok else "not supported")


def claims_section(claims: list[list]) -> str:
    return "## Claims beside measurements\n\n" + markdown_table(["source", "claim", "measured", "verdict"], claims)


def write_report(path: str, title: str, intro: str, sections: list[str]) -> None:
    with open(os.path.join(path, "report.md"), "w") as f:
        f.write("\n\n".join([f"# {title}", intro, *sections]) + "\n")
