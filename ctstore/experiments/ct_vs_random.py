"""CT vs SGD (Papers 51, 113 §8): does a model seeded from corpus statistics train better?

Arms (same architecture, same SFT budget unless noted, several seeds):

=====================  =============================================================
``random``             (a) random initialisation
``k0``                 (b) circulant K0 embeddings + spectral seeding
``svd``                (c) SVD of log-counts (``--kernel none``) + spectral seeding
``ppmi``               (d) PPMI embeddings + spectral seeding
``random_long``        (e) random initialisation, ``long_factor``× the steps ("full SGD")
``svd_embeddings``     (f) SVD embeddings with random layers
``k0_frozen`` ...      (g) (b)–(d) with frozen embeddings (Paper 113 protocol)
``crystallize``        Paper 51's training-free model (:mod:`ctstore.crystallize`),
                       reported before and after the same SFT
=====================  =============================================================

The report gives, per arm, final validation perplexity (mean ± std over seeds),
the gap to (e), wall time, a FLOPs estimate and the first step at which the arm
reached (a)'s final perplexity. The seeds' claims are hypotheses; the table
says what this run measured.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .._util import log
from ..report import markdown_table, plot_curves, publish_report

ARMS = {
    "random": dict(kernel=None, init="random"),
    "k0": dict(kernel="circulant", init="spectral"),
    "svd": dict(kernel="none", init="spectral"),
    "ppmi": dict(kernel="ppmi", init="spectral"),
    "random_long": dict(kernel=None, init="random", long=True),
    "svd_embeddings": dict(kernel="none", init="embeddings"),
    "k0_frozen": dict(kernel="circulant", init="spectral", freeze=True),
    "svd_frozen": dict(kernel="none", init="spectral", freeze=True),
    "ppmi_frozen": dict(kernel="ppmi", init="spectral", freeze=True),
    "crystallize": dict(kernel=None, init="crystallize"),
}


def run(config: dict, ctx):
    exp = config.get("experiment", {})
    arms = exp.get("arms", list(ARMS))
    seeds = exp.get("seeds", [0])
    long_factor = int(exp.get("long_factor", 4))
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        from .._util import CtstoreError

        raise CtstoreError(f"[experiment] arms: unknown {unknown}; known: {', '.join(ARMS)}")
    tokens = ctx.tokens(config["corpus"])
    counts = ctx.counts(tokens, config.get("count", {}))
    k0_base = config.get("k0", {})
    model_cfg = config.get("model", {"config": "tiny"})
    sft_base = config.get("sft", {})
    embeddings = {}
    for kernel in sorted({ARMS[a]["kernel"] or "circulant" for a in arms if a != "crystallize"}):
        embeddings[kernel] = ctx.embeddings(counts, {**k0_base, "kernel": kernel})
    runs: dict[str, list] = {}
    for arm in arms:
        spec = ARMS[arm]
        for seed in seeds:
            if spec["init"] == "crystallize":
                crystal = {"config": model_cfg.get("config", "tiny"), "vocab": model_cfg.get("vocab", 4096),
                           **config.get("crystallize", {}), "seed": seed}
                model = ctx.crystallized(counts, crystal)
            else:
                emb = embeddings[spec["kernel"] or "circulant"]
                model = ctx.model(emb, {**model_cfg, "init": spec["init"], "seed": seed})
            sft = {**sft_base, "seed": seed, "freeze_embeddings": bool(spec.get("freeze"))}
            if spec.get("long"):
                sft["steps"] = int(sft.get("steps", 200)) * long_factor
            log(f"ct_vs_random: arm {arm}, seed {seed}")
            runs.setdefault(arm, []).append(ctx.run(model, tokens, sft))
    inputs = {"counts": counts.fingerprint, "runs": sorted(r.fingerprint for rs in runs.values() for r in rs)}
    return publish_report(ctx.ws, "ct_vs_random", config, inputs,
                          lambda path: _write_report(path, config, runs, embeddings), force=ctx.force)


def _curve(run) -> tuple[list, list]:
    with open(os.path.join(run.path, "metrics.jsonl")) as f:
        rows = [json.loads(x) for x in f]
    evals = [r for r in rows if "val_ppl" in r]
    return [r["step"] for r in evals], [r["val_ppl"] for r in evals]


def summarize(runs: dict[str, list]) -> dict:
    out = {}
    for arm, rs in runs.items():
        ppl = np.array([r.manifest["final_val_ppl"] for r in rs])
        before = np.array([_curve(r)[1][0] for r in rs])
        out[arm] = {"ppl_mean": float(ppl.mean()), "ppl_before_sft": float(before.mean()), "ppl_std": float(ppl.std(ddof=1)) if len(ppl) > 1 else 0.0,
                    "seconds": float(np.mean([r.manifest["train_seconds"] for r in rs])),
                    "flops": float(np.mean([r.manifest["flops"] for r in rs])),
                    "steps": int(np.mean([r.manifest["steps"] for r in rs])), "seeds": len(rs)}
    if "random" in out:
        target = out["random"]["ppl_mean"]
        for arm, rs in runs.items():
            reached = []
            for r in rs:
                steps, ppl = _curve(r)
                reached.append(next((s for s, p in zip(steps, ppl) if p <= target), None))
            out[arm]["steps_to_random_final"] = None if None in reached else float(np.mean(reached))
    if "random_long" in out:
        for arm in out:
            out[arm]["gap_to_long"] = out[arm]["ppl_mean"] - out["random_long"]["ppl_mean"]
    return out


def _write_report(path: str, config: dict, runs: dict, embeddings: dict) -> dict:
    summary = summarize(runs)
    extra = _extra_columns(runs, summary)
    header = ["arm", "seeds", "val ppl before SFT", "final val ppl", "± std", "gap to (e)", "wall s", "FLOPs",
              "steps", "steps to (a) final", *extra]
    rows = [[arm, s.get("seeds"), s.get("ppl_before_sft"), s.get("ppl_mean"), s.get("ppl_std"), s.get("gap_to_long"),
             s.get("seconds"), f"{s['flops']:.3g}" if "flops" in s else None, s.get("steps"),
             s.get("steps_to_random_final"), *[extra[k].get(arm) for k in extra]] for arm, s in summary.items()]
    curves = {}
    for arm, rs in runs.items():
        steps, _ = _curve(rs[0])
        mean = np.mean([_curve(r)[1][: len(steps)] for r in rs], axis=0)
        curves[arm] = (steps, list(mean))
    plot_curves(os.path.join(path, "loss_curves.png"), curves, "SFT step", "validation perplexity",
                "CT seeding vs random initialisation", logy=True)
    claims_text, claims = _claims_section(runs)
    ops = [[k, e.fingerprint, e.manifest.get("operator_note")] for k, e in embeddings.items()]
    seeds = config.get("experiment", {}).get("seeds", [0])
    text = "\n\n".join([
        "# CT vs random initialisation",
        f"Model `{config.get('model', {}).get('config', 'tiny')}`, {config.get('sft', {}).get('steps', 200)} SFT "
        f"steps, seeds {seeds}. Perplexity is on held-out documents.",
        markdown_table(header, rows),
        claims_text,
        "## Embedding operators",
        markdown_table(["kernel", "artifact", "what it is"], ops),
        "![validation perplexity](loss_curves.png)",
    ])
    with open(os.path.join(path, "report.md"), "w") as f:
        f.write(text + "\n")
    return {"summary": summary, "claims": claims}


# ---------------------------------------------------------------------------------------
# Claims (registry: ctstore/claims.toml), paired per seed


def _by_seed(runs: dict, arm: str) -> dict:
    """``{seed: run}`` of an arm; the seed is the SFT seed stored in each run's manifest."""
    return {r.manifest.get("params", {}).get("seed", i): r for i, r in enumerate(runs.get(arm, []))}


def _paired_values(runs: dict, arm: str, baseline: str, value) -> tuple[list, list]:
    """``value(arm_run, baseline_run)`` for every seed both arms ran, and those seeds."""
    a, b = _by_seed(runs, arm), _by_seed(runs, baseline)
    seeds = sorted(set(a) & set(b))
    return [value(a[s], b[s]) for s in seeds], seeds


def _first_step_at_or_below(run, target: float):
    steps, ppl = _curve(run)
    return next((s for s, p in zip(steps, ppl) if p <= target), None)


def claim_measurements(runs: dict) -> list:
    """The registry's ct_vs_random claims measured from ``runs`` (``{arm: [run per seed]}``)."""
    from ..claims import missing, paired

    final = lambda r: r.manifest["final_val_ppl"]  # noqa: E731

    def steps_ratio(a, b):
        reached = _first_step_at_or_below(a, final(b))
        return b.manifest["steps"] / reached if reached else None

    tests = [  # claim, arm, baseline, per-seed value(arm run, baseline run), note
        ("p113.head_start", "k0", "random", lambda a, b: final(a) - final(b), ""),
        ("p113.gap_to_sgd", "k0", "random_long", lambda a, b: final(a) / final(b) - 1, ""),
        ("p51.crystallized_within_15", "crystallize", "random_long", lambda a, b: _curve(a)[1][0] / final(b) - 1,
         "crystallize evaluated before SFT"),
        ("p113.steps_saved", "k0", "random", steps_ratio, ""),
    ]
    out = []
    for claim_id, arm, baseline, value, note in tests:
        if arm not in runs or baseline not in runs:
            out.append(missing(claim_id, f"needs arms {arm} and {baseline}"))
            continue
        values, seeds = _paired_values(runs, arm, baseline, value)
        if not values:
            out.append(missing(claim_id, f"no seed ran both {arm} and {baseline}"))
            continue
        if None in values:
            note = f"{note}; " if note else ""
            note += f"{arm} never reached {baseline}'s final ppl in seed(s) " + \
                ", ".join(str(s) for s, v in zip(seeds, values) if v is None)
        out.append(paired(claim_id, values, note=f"{arm} vs {baseline}, seeds {seeds}" + (f"; {note}" if note else "")))
    return out


def _claims_section(runs: dict) -> tuple[str, list]:
    from .common import claims_section

    return claims_section("ct_vs_random", claim_measurements(runs))


def _extra_columns(runs: dict, summary: dict) -> dict:
    """``{field: {arm: value}}`` for the optional per-arm fields (seeding recipe, <unk> rate, coverage).

    Taken from the summary when it has them, else from the runs' manifests (mean over seeds for numbers);
    a field no arm has is left out, so older runs still report.
    """
    out = {}
    for key in ("recipe", "unk_rate", "coverage"):
        column = {}
        for arm, rs in runs.items():
            if key in summary.get(arm, {}):
                column[arm] = summary[arm][key]
                continue
            found = [r.manifest[key] for r in rs if key in r.manifest]
            if found:
                numeric = all(isinstance(v, (int, float)) for v in found)
                column[arm] = float(np.mean(found)) if numeric else found[0]
        if column:
            out[key] = column
    return out

