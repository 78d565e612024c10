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
CLAIMS = [
    ("Paper 113 §8", "CT-seeded models reach lower perplexity than random init after the same SFT steps",
     "k0", "random"),
    ("Paper 51", "CT seeding closes most of the gap to a longer SGD run", "k0", "random_long"),
]


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
    header = ["arm", "val ppl before SFT", "final val ppl", "± std", "gap to (e)", "wall s", "FLOPs", "steps",
              "steps to (a) final"]
    rows = [[arm, s["ppl_before_sft"], s["ppl_mean"], s["ppl_std"], s.get("gap_to_long"), s["seconds"], f"{s['flops']:.3g}", s["steps"],
             s.get("steps_to_random_final")] for arm, s in summary.items()]
    curves = {}
    for arm, rs in runs.items():
        steps, _ = _curve(rs[0])
        mean = np.mean([_curve(r)[1][: len(steps)] for r in rs], axis=0)
        curves[arm] = (steps, list(mean))
    plot_curves(os.path.join(path, "loss_curves.png"), curves, "SFT step", "validation perplexity",
                "CT seeding vs random initialisation", logy=True)
    claims = []
    for source, text, arm, baseline in CLAIMS:
        if arm in summary and baseline in summary:
            a, b = summary[arm]["ppl_mean"], summary[baseline]["ppl_mean"]
            verdict = "supported" if a < b else "not supported"
            claims.append([source, text, f"{arm} {a:.4g} vs {baseline} {b:.4g}", verdict])
    ops = [[k, e.fingerprint, e.manifest.get("operator_note")] for k, e in embeddings.items()]
    text = "\n\n".join([
        "# CT vs random initialisation",
        f"Model `{config.get('model', {}).get('config', 'tiny')}`, {config.get('sft', {}).get('steps', 200)} SFT "
        f"steps, seeds {config.get('experiment', {}).get('seeds', [0])}. Perplexity is on held-out documents.",
        markdown_table(header, rows),
        "## Claims beside measurements",
        markdown_table(["source", "claim", "measured", "verdict"], claims) if claims else "(arms for claims not run)",
        "## Embedding operators",
        markdown_table(["kernel", "artifact", "what it is"], ops),
        "![validation perplexity](loss_curves.png)",
        samples_section(runs),
    ])
    with open(os.path.join(path, "report.md"), "w") as f:
        f.write(text + "\n")
    return {"summary": summary, "claims": claims}


SAMPLE_PROMPTS = ("First Citizen:\n", "The")


def samples_section(runs: dict, prompts=SAMPLE_PROMPTS, max_new_tokens: int = 30) -> str:
    """Markdown with a few sampled continuations per arm (the first seed's model after SFT)."""
    from ..generate import SampleParams, generate_text, load_generator

    params = [SampleParams(max_new_tokens=max_new_tokens, temperature=0.8, top_k=40, seed=i)
              for i in range(len(prompts))]
    parts = ["## Samples after SFT",
             f"Continuations of fixed prompts by each arm's first run (temperature 0.8, top-k 40, seed = the prompt's "
             f"index from 0, {max_new_tokens} tokens; `⟨unk⟩` is a token outside the compact vocabulary). "
             f"Reproduce with `ctstore generate RUN --prompt TEXT --seed N`."]
    for arm, rs in runs.items():
        model, vocab_map, enc = load_generator(os.path.join(rs[0].path, "model"))
        texts = [generate_text(model, vocab_map, enc, p, q)["text"].replace("```", "'''")
                 for p, q in zip(prompts, params)]
        parts.append(f"**{arm}** (`{rs[0].fingerprint[:12]}`)\n\n```text\n" + "\n---\n".join(texts) + "\n```")
    return "\n\n".join(parts)
