"""CT vs SGD (Papers 51, 113 §8): does a model seeded from corpus statistics train better?

Arms (same architecture, same SFT schedule unless noted, several seeds):

========================== ==========================================================
``random``                 (a) random initialisation
``k0``                     (b) circulant K0 embeddings + spectral seeding
``k0_literal``             (b) with the paper-literal seeding recipe (degenerate: the
                           layer matrices are scaled permutations, see ``ctstore.seed``)
``svd``                    (c) SVD of log-counts (``--kernel none``) + spectral seeding
``ppmi``                   (d) PPMI embeddings + spectral seeding
``ppmi075``                (d') PPMI with context smoothing 0.75, symmetric 1/d window,
                           √S weighting + spectral seeding
``random_long``            (e) random initialisation, ``long_factor``× the steps ("full SGD")
``svd_embeddings``         (f) SVD embeddings with standard random layers
``ppmi075_embeddings``     (f') (d') embeddings with standard random layers
``svd_embeddings_unigram`` (f'') (f) with the output side from unigram statistics: the
                           final LayerNorm bias makes the first logits ≈ log p(token)
``random_unigram``         (a) with the same unigram output prior (its control)
``k0_frozen`` ...          (g) (b)–(d) with the token embedding frozen *unscaled*, as
                           Paper 113 §8 freezes E (tied head, so the head is frozen too)
``svd_frozen_untied``      (g') (c) frozen unscaled E with an untied, trained output head
``crystallize``            Paper 51's training-free model (:mod:`ctstore.crystallize`),
                           reported before and after the same SFT
========================== ==========================================================

No leakage: counts, embeddings and the compact-vocabulary ranking are built from
the training documents only (``[count] val_fraction`` is set to SFT's split, the
same document hash), so no validation text reaches the statistics. Every arm
uses the same vocabulary map and the same ``<unk>`` row treatment; ``[model]
vocab = "corpus"`` keeps every token that occurs in the training documents.

Each seed varies the model initialisation, the batch order and the k0 seed
(randomized SVD and inactive-token rows). ``results.json`` holds per-seed values
(``per_seed``) and the paired per-seed differences against ``random``;
"steps to random's final perplexity" is read on each run's own evaluation curve
(evaluate every <= 10 steps) against the final perplexity of the ``random`` run
of the same seed, which has the same schedule length; arms with another
schedule (``random_long``) get no step figure.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..errors import CtstoreError
from ..log import log
from ..report import markdown_table, plot_curves, publish_report

K0_SPECS = {
    "circulant": {"kernel": "circulant"},
    "svd": {"kernel": "none"},
    "ppmi": {"kernel": "ppmi"},
    "ppmi075": {"kernel": "ppmi", "ppmi_alpha": 0.75, "symmetric": True, "weighting": "inverse-distance"},
}
ARMS = {
    "random": dict(k0=None, init="random"),
    "k0": dict(k0="circulant", init="spectral"),
    "k0_literal": dict(k0="circulant", init="spectral", recipe="literal"),
    "svd": dict(k0="svd", init="spectral"),
    "ppmi": dict(k0="ppmi", init="spectral"),
    "ppmi075": dict(k0="ppmi075", init="spectral"),
    "random_long": dict(k0=None, init="random", long=True),
    "svd_embeddings": dict(k0="svd", init="embeddings"),
    "ppmi075_embeddings": dict(k0="ppmi075", init="embeddings"),
    "svd_embeddings_unigram": dict(k0="svd", init="embeddings", unigram_prior=True),
    "random_unigram": dict(k0=None, init="random", unigram_prior=True),
    "k0_frozen": dict(k0="circulant", init="spectral", freeze=True, embed_scale="unscaled"),
    "svd_frozen": dict(k0="svd", init="spectral", freeze=True, embed_scale="unscaled"),
    "ppmi_frozen": dict(k0="ppmi", init="spectral", freeze=True, embed_scale="unscaled"),
    "svd_frozen_untied": dict(k0="svd", init="spectral", freeze=True, embed_scale="unscaled", tie_head=False),
    "crystallize": dict(k0=None, init="crystallize"),
}
MAX_EVAL_EVERY = 10  # evaluation interval the step-to-target figure needs


def run(config: dict, ctx):
    exp = config.get("experiment", {})
    arms = exp.get("arms", list(ARMS))
    seeds = exp.get("seeds", [0, 1, 2])
    long_factor = int(exp.get("long_factor", 4))
    recipe = exp.get("recipe", "rotated")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise CtstoreError(f"[experiment] arms: unknown {unknown}; known: {', '.join(ARMS)}")
    sft_base = config.get("sft", {})
    if int(sft_base.get("eval_every", 50)) > MAX_EVAL_EVERY:
        log(f"ct_vs_random: warning: sft.eval_every={sft_base.get('eval_every', 50)} > {MAX_EVAL_EVERY}; "
            "steps-to-target figures are coarse")
    tokens = ctx.tokens(config["corpus"])
    # statistics from the training documents only: the same split sft holds out
    count_params = {**config.get("count", {}), "val_fraction": float(sft_base.get("val_fraction", 0.1))}
    counts = ctx.counts(tokens, count_params)
    k0_base = config.get("k0", {})
    model_cfg = config.get("model", {"config": "tiny"})
    embeddings: dict = {}

    def emb_for(name: str, seed: int):
        key = f"{name} (seed {seed})"
        if key not in embeddings:
            embeddings[key] = ctx.embeddings(counts, {**k0_base, **K0_SPECS[name], "seed": seed})
        return embeddings[key]

    runs: dict[str, list] = {}
    for arm in arms:
        spec = ARMS[arm]
        for seed in seeds:
            if spec["init"] == "crystallize":
                vocab = model_cfg.get("vocab", 4096)
                if not isinstance(vocab, int):
                    raise CtstoreError("[model] vocab must be a number for the crystallize arm")
                crystal = {"config": model_cfg.get("config", "tiny"), "vocab": vocab,
                           **config.get("crystallize", {}), "seed": seed}
                model = ctx.crystallized(counts, crystal)
            else:
                emb = emb_for(spec["k0"] or "circulant", seed)
                seed_params = {**model_cfg, "init": spec["init"], "seed": seed,
                               "recipe": spec.get("recipe", recipe)}
                if spec.get("embed_scale"):
                    seed_params["embed_scale"] = spec["embed_scale"]
                for key in ("tie_head", "unigram_prior"):
                    if key in spec:
                        seed_params[key] = spec[key]
                model = ctx.model(emb, seed_params)
            sft = {**sft_base, "seed": seed, "freeze_embeddings": bool(spec.get("freeze"))}
            if spec.get("long"):
                sft["steps"] = int(sft.get("steps", 200)) * long_factor
            log(f"ct_vs_random: arm {arm}, seed {seed}")
            runs.setdefault(arm, []).append(ctx.run(model, tokens, sft))
    inputs = {"counts": counts.fingerprint, "runs": sorted(r.fingerprint for rs in runs.values() for r in rs)}
    return publish_report(ctx.ws, "ct_vs_random", config, inputs,
                          lambda path: _write_report(path, config, runs, embeddings), force=ctx.force, version=2)


def _curve(run) -> tuple[list, list]:
    with open(os.path.join(run.path, "metrics.jsonl")) as f:
        rows = [json.loads(x) for x in f]
    evals = [r for r in rows if "val_ppl" in r]
    return [r["step"] for r in evals], [r["val_ppl"] for r in evals]


def first_step_reaching(steps: list, ppl: list, target: float) -> int | None:
    """First evaluated step at which perplexity is at or below ``target`` (None: never)."""
    return next((s for s, p in zip(steps, ppl) if p <= target), None)


def _seed_of(run) -> int:
    return int(run.manifest["params"]["seed"])


def summarize(runs: dict[str, list]) -> dict:
    """Per arm: means over seeds, ``per_seed`` values and paired differences against ``random``.

    Paired values use the ``random`` run of the same seed; ``steps_to_random_final`` and
    ``step_saving`` only for arms whose schedule length equals random's.
    """
    out = {}
    random_by_seed = {_seed_of(r): r for r in runs.get("random", [])}
    for arm, rs in runs.items():
        per_seed = []
        for r in rs:
            m = r.manifest
            steps, ppl = _curve(r)
            row = {"seed": _seed_of(r), "final_val_ppl": m["final_val_ppl"], "final_val_loss": m["final_val_loss"],
                   "ppl_before_sft": ppl[0], "unk_rate": m.get("final_val_unk_rate"),
                   "ppl_known": m.get("final_val_ppl_known"), "type_coverage": m.get("val_type_coverage"),
                   "steps": m["steps"], "seconds": m["train_seconds"]}
            base = random_by_seed.get(row["seed"])
            if base is not None:
                row["ppl_diff_vs_random"] = m["final_val_ppl"] - base.manifest["final_val_ppl"]
                row["loss_diff_vs_random"] = m["final_val_loss"] - base.manifest["final_val_loss"]
                if m["params"]["steps"] == base.manifest["params"]["steps"]:
                    reached = first_step_reaching(steps, ppl, base.manifest["final_val_ppl"])
                    row["steps_to_random_final"] = reached
                    row["step_saving"] = None if reached is None else base.manifest["steps"] - reached
            per_seed.append(row)
        ppl = np.array([r.manifest["final_val_ppl"] for r in rs])
        m0 = rs[0].manifest
        s = {"ppl_mean": float(ppl.mean()), "ppl_before_sft": float(np.mean([p["ppl_before_sft"] for p in per_seed])),
             "ppl_std": float(ppl.std(ddof=1)) if len(ppl) > 1 else 0.0,
             "seconds": float(np.mean([r.manifest["train_seconds"] for r in rs])),
             "flops": float(np.mean([r.manifest["flops"] for r in rs])),
             "steps": int(np.mean([r.manifest["steps"] for r in rs])), "seeds": len(rs),
             "schedule_steps": m0["params"]["steps"], "eval_every": m0["params"]["eval_every"],
             "eval_tokens": m0.get("eval_tokens"), "eval_block": m0.get("eval_block"),
             "unk_rate": _mean(p["unk_rate"] for p in per_seed),
             "type_coverage": _mean(p["type_coverage"] for p in per_seed),
             "ppl_known_mean": _mean(p["ppl_known"] for p in per_seed),
             "model_vocab": m0.get("model_vocab"), "recipe": m0.get("recipe"),
             "embed_scale": m0.get("embed_scale"), "tie_head": m0.get("tie_head"),
             "frozen_embeddings": bool(m0["params"].get("freeze_embeddings")), **_seeding_facts(rs),
             "per_seed": per_seed}
        if all("ppl_diff_vs_random" in p for p in per_seed):
            s["paired_ppl_diff_vs_random"] = [p["ppl_diff_vs_random"] for p in per_seed]
            s["paired_loss_diff_vs_random"] = [p["loss_diff_vs_random"] for p in per_seed]
        if per_seed and all("steps_to_random_final" in p for p in per_seed):
            reached = [p["steps_to_random_final"] for p in per_seed]
            s["steps_to_random_final"] = None if None in reached else float(np.mean(reached))
            s["step_saving_per_seed"] = [p["step_saving"] for p in per_seed]
        out[arm] = s
    if "random_long" in out:
        for arm in out:
            out[arm]["gap_to_long"] = out[arm]["ppl_mean"] - out["random_long"]["ppl_mean"]
    return out


def _seeding_facts(rs: list) -> dict:
    """From the seeded models' manifests: spectral gap, layer cosines and how permutation-like the layers are."""
    reports = []
    for r in rs:
        ws = getattr(r, "workspace", None)
        model = ws.find("model", r.manifest.get("inputs", {}).get("model", "")) if ws is not None else None
        if model is not None:
            reports.append(model.manifest.get("report", {}))
    return {"spectral_gap_ratio": _mean(x.get("spectral_gap_ratio") for x in reports),
            "layer_cosine_mean": _mean((x.get("layer_cosine") or {}).get("mean") for x in reports),
            "max_row_energy_share": _mean(x.get("max_row_energy_share") for x in reports)}


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


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
        samples_section(runs),
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

    Taken from the summary when it has them (coverage under its summary name ``type_coverage`` too), else
    from the runs' manifests (mean over seeds for numbers); a field no arm has is left out, so older runs
    still report.
    """
    out = {}
    for key, names in (("recipe", ("recipe",)), ("unk_rate", ("unk_rate",)),
                       ("coverage", ("coverage", "type_coverage"))):
        column = {}
        for arm, rs in runs.items():
            found_in_summary = [summary.get(arm, {})[n] for n in names if summary.get(arm, {}).get(n) is not None]
            if found_in_summary:
                column[arm] = found_in_summary[0]
                continue
            found = [r.manifest[key] for r in rs if key in r.manifest]
            if found:
                numeric = all(isinstance(v, (int, float)) for v in found)
                column[arm] = float(np.mean(found)) if numeric else found[0]
        if column:
            out[key] = column
    return out


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
