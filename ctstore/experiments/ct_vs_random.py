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
``bigram_init``            step-0 logits = a rank-(d−2) factorisation of the Witten–Bell
                           bigram's log-conditionals (training documents only): token
                           embedding + untied head from the factors, residual projections
                           zeroed so every block starts as the identity (``seed --init bigram``)
``bigram_prev``            ``bigram_init`` plus a previous-token head in layer 0 carrying the
                           lag-2 statistics (``seed --init bigram_prev``, :mod:`ctstore.seed_prev`)
``random_untied``          (a) with an untied output head: the control for ``bigram_init``'s
                           extra head parameters
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
schedule (``random_long``) get no step figure. The *step fraction* is that step
over random's steps, per seed, with censoring (a seed that never gets there
counts as ≥ 1) and a 95% t interval.

Every report also prints count-based baselines from the same training-only
counts (add-one unigram, Witten–Bell bigram; :mod:`ctstore.analysis.baselines`)
on the same evaluation windows, a one-line takeaway first, and is rendered from
``results.json`` alone (:func:`render_report`), so a committed report can be
checked against today's code. Claims the arms run cannot test say which arm
they need; claims about weights or attention carry a null model's value.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..errors import CtstoreError
from ..log import log
from ..report import markdown_table, plot_curves, publish_report
from ..sft.eval import EVAL_SAMPLE
from .common import claims_section, eval_curve
from .ct_vs_random_summary import claims_table, extra_columns, summarize

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
    "bigram_init": dict(k0=None, init="bigram", tie_head=False),
    "bigram_prev": dict(k0=None, init="bigram_prev", tie_head=False),
    "random_untied": dict(k0=None, init="random", tie_head=False),
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
                          lambda path: _write_report(path, config, runs, embeddings, counts), force=ctx.force,
                          version=3)


def _write_report(path: str, config: dict, runs: dict, embeddings: dict, counts=None) -> dict:
    """Measure everything into ``results`` (what results.json holds), then render report.md from it alone."""
    summary = summarize(runs)
    curves = {}
    for arm, rs in runs.items():
        steps, _ = eval_curve(rs[0], "val_ppl")
        mean = np.mean([eval_curve(r, "val_ppl")[1][: len(steps)] for r in rs], axis=0)
        curves[arm] = (steps, list(mean))
    plot_curves(os.path.join(path, "loss_curves.png"), curves, "SFT step", "validation perplexity",
                "CT seeding vs random initialisation", logy=True)
    _claims_text, claims = claims_table(runs)
    first = next(iter(runs.values()))[0]
    results = {
        "summary": summary, "claims": claims, "extra": extra_columns(runs, summary),
        "baselines": count_baselines_for(counts, first) if counts is not None else None,
        "setup": {"model": config.get("model", {}).get("config", "tiny"),
                  "steps": config.get("sft", {}).get("steps", 200),
                  "seeds": config.get("experiment", {}).get("seeds", [0]), "arms": list(runs),
                  "note": config.get("experiment", {}).get("note"),
                  "eval_tokens": first.manifest.get("eval_tokens"), "eval_block": first.manifest.get("eval_block"),
                  "eval_sample": EVAL_SAMPLE if first.manifest["params"].get("eval_tokens") else "whole split"},
        "operators": [[k, e.fingerprint, e.manifest.get("operator_note")] for k, e in embeddings.items()],
        "samples": samples_section(runs),
    }
    results["setup"]["extra_columns"] = list(results["extra"])
    # render exactly what results.json will hold (publish_report writes it with sorted keys)
    results = json.loads(json.dumps(results, default=float, sort_keys=True))
    with open(os.path.join(path, "report.md"), "w") as f:
        f.write(render_report(results))
    return results


def count_baselines_for(counts, run) -> dict:
    """Unigram and Witten–Bell bigram from the training-only ``counts``, in ``run``'s vocabulary, on its
    evaluation windows (:mod:`ctstore.analysis.baselines`)."""
    from ..analysis.baselines import compact_counts, count_baselines
    from ..formats.counts import CountStore
    from ..formats.model import load_model
    from ..sft.data import TokenSplit
    from ..sft.eval import validation_windows

    ws, p = run.workspace, run.manifest["params"]
    tokens = ws.find("tokens", run.manifest["inputs"]["tokens"])
    val = TokenSplit(tokens, p["val_fraction"],
                     ws.scratch_dir("tokens", f"{tokens.fingerprint}-val{p['val_fraction']}")).arrays["val"]
    _model, vocab_map, _raw = load_model(os.path.join(run.path, "model"))
    store = CountStore.from_artifact(counts)
    windows = validation_windows(len(val), run.manifest["eval_block"], p.get("eval_tokens"))
    out = count_baselines(compact_counts(store.unigram, store.matrix(1), vocab_map), val, windows, vocab_map)
    out["counts"] = counts.fingerprint
    return out


COLUMNS = """Columns. *final val ppl*: mean over seeds of the validation perplexity after SFT (± the seeds' standard \
deviation). *Δ ppl vs (a)*: the paired per-seed difference arm − random of the same seed, mean and 95% t interval; \
**positive = worse than random**. *gap to (e)*: final ppl minus that of `random_long` (random init trained \
`long_factor`× the steps); positive = worse than (e). *steps to (a)*: the first evaluated step at which the arm's \
validation perplexity is at or below the final perplexity of the random run of the same seed (mean over seeds; \
— when a seed never gets there). *step fraction*: that step / random's steps, per seed, with its 95% t interval; \
a seed that never reaches the target is censored at 1 (it needs at least the whole schedule), and the count of \
censored seeds is given; step 0 counts as reached. *stays below from*: the same fraction for the first step from \
which every later evaluation stays at or below the target (it differs when an arm starts below the target and \
leaves it during SFT). *wall s*: SFT seconds as measured; on a shared machine they vary with its load, so compare \
FLOPs, not seconds, across arms. *tokens/s*, *model GFLOP/s*: training tokens and the model's FLOPs estimate (6N plus \
attention per token) over those seconds, mean over seeds (evaluation excluded); like *wall s* they measure the \
machine's load as much as the code. *MFU*: model FLOP/s over the device's peak, where the peak is known \
(`ctstore.sft.throughput`)."""


def render_report(results: dict) -> str:
    """report.md from ``results`` (the dict results.json holds) alone: a committed report can be re-rendered."""
    summary, setup, base = results["summary"], results["setup"], results.get("baselines")
    extra = {k: results.get("extra", {})[k] for k in setup.get("extra_columns", sorted(results.get("extra", {})))}
    header = ["arm", "seeds", "val ppl before SFT", "final val ppl", "± std", "Δ ppl vs (a) [95% CI]", "gap to (e)",
              "steps to (a)", "step fraction [95% CI] (censored)", "stays below from [95% CI]", "wall s", "FLOPs",
              "tokens/s", "model GFLOP/s", "MFU", *extra]
    rows = [[arm, s.get("seeds"), s.get("ppl_before_sft"), s.get("ppl_mean"), s.get("ppl_std"),
             _ci(s.get("paired_ppl_diff_interval")) if arm != "random" else "—", s.get("gap_to_long"),
             s.get("steps_to_random_final"), _fraction(s.get("step_fraction")) if arm != "random" else "—",
             _fraction(s.get("step_fraction_sustained")) if arm != "random" else "—",
             s.get("seconds"), f"{s['flops']:.3g}" if "flops" in s else None,
             *_rate_cells(s), *[extra[k].get(arm) for k in extra]] for arm, s in ((a, summary[a]) for a in setup["arms"])]
    how = ("a systematic sample: windows evenly spaced over the whole validation split, all documents in split "
           "order (a document shorter than the spacing may get none)" if setup["eval_sample"] == "systematic"
           else "the whole validation split")
    sample = f"{setup['eval_tokens']} predicted tokens in windows of {setup['eval_block']}, {how}"
    parts = ["# CT vs random initialisation", *([f"*{setup['note']}*"] if setup.get("note") else []),
             takeaway(results),
             f"Model `{setup['model']}`, {setup['steps']} SFT steps, seeds {setup['seeds']}. Perplexity is on "
             f"held-out documents ({sample}).", markdown_table(header, rows), COLUMNS + _mfu_line(summary, setup)]
    if base:
        parts += ["## Count-based baselines",
                  "From the same training-only counts as the arms (count artifact "
                  f"`{base['counts'][:12]}`), in the model's compact vocabulary, scored on the same evaluation "
                  "windows. A trained arm above the bigram line has not yet learned what counting adjacent pairs "
                  "gives.",
                  markdown_table(["baseline", "val ppl", "tokens"],
                                 [["unigram (add-one)", base["unigram"]["ppl"], base["unigram"]["tokens"]],
                                  ["bigram (Witten–Bell)", base["bigram_wb"]["ppl"], base["bigram_wb"]["tokens"]]])]
    parts += [_claims_text(results["claims"]), "## Embedding operators",
              markdown_table(["kernel", "artifact", "what it is"], results["operators"]),
              "![validation perplexity](loss_curves.png)", results["samples"]]
    return "\n\n".join(parts) + "\n"


def takeaway(results: dict) -> str:
    """The one-line takeaway: the best arm, its paired difference and step fraction, the bigram line."""
    summary, base = results["summary"], results.get("baselines")
    if "random" not in summary:
        return "**Takeaway:** no `random` arm ran, so nothing is paired."
    others = {a: s for a, s in summary.items() if a not in ("random", "random_long")}
    line = f"**Takeaway:** random ends at ppl {summary['random']['ppl_mean']:.1f}"
    if others:
        best = min(others, key=lambda a: others[a]["ppl_mean"])
        s = others[best]
        line += (f"; the best arm, `{best}`, ends at {s['ppl_mean']:.1f} (Δ vs random "
                 f"{_ci(s.get('paired_ppl_diff_interval'))}, positive = worse)")
        if s.get("step_fraction"):
            line += f" and reaches random's final ppl in {_fraction(s['step_fraction'])} of random's steps"
            if s["step_fraction"].get("high") == 0.0:
                line += (" (0 by construction: its initial model is already below random's final ppl, "
                         f"{s['ppl_before_sft']:.1f} before SFT)")
            sustained = s.get("step_fraction_sustained")
            if sustained and sustained.get("mean") != s["step_fraction"].get("mean"):
                line += f" (stays below it from {_fraction(sustained)})"
            converse = s.get("random_fraction_to_start")
            if s["step_fraction"].get("high") == 0.0 and converse:
                n_cens = converse.get("censored", 0)
                line += (f"; conversely, random reaches `{best}`'s step-0 ppl in {_fraction(converse)} of its "
                         "steps" + (f" ({'no' if n_cens == converse['n'] else 'not every'} seed gets there "
                                    "within the schedule: a censored seed counts as 1, so the fraction is a "
                                    "lower bound)" if n_cens else ""))
    if base:
        bigram = base["bigram_wb"]["ppl"]
        below = [a for a in results["setup"]["arms"] if summary[a]["ppl_mean"] < bigram]
        line += (f". The Witten–Bell bigram scores {bigram:.1f}: "
                 + (f"{', '.join(f'`{a}`' for a in below)} end{'s' if len(below) == 1 else ''} below it."
                    if below else "no arm ends below it."))
    return line + "."  if not line.endswith(".") else line


def _rate_cells(s: dict) -> list:
    """tokens/s, model GFLOP/s and MFU of one arm (from the summary, or derived from FLOPs and seconds for a
    results.json written before they were recorded)."""
    fps = s.get("model_flops_per_s")
    if fps is None and s.get("flops") and s.get("seconds"):
        fps = s["flops"] / s["seconds"]
    tps = s.get("tokens_per_s")
    return [f"{tps:.0f}" if tps is not None else "—", f"{fps / 1e9:.3g}" if fps is not None else "—",
            f"{s['mfu']:.1%}" if s.get("mfu") is not None else "null"]


def _mfu_line(summary: dict, setup: dict) -> str:
    notes = sorted({summary[a].get("mfu_note") or "no known peak (a run recorded before MFU was)"
                    for a in setup["arms"] if summary[a].get("mfu") is None})
    return f" MFU null: {'; '.join(notes)}." if notes else ""


def _ci(iv: dict | None) -> str:
    if not iv or iv.get("mean") is None:
        return "—"
    if iv.get("low") is None:
        return f"{iv['mean']:+.3g} ({iv['n']} seed)"
    return f"{iv['mean']:+.3g} [{iv['low']:+.3g}, {iv['high']:+.3g}]"


def _fraction(iv: dict | None) -> str:
    if not iv or iv.get("mean") is None:
        return "—"
    cens = f" ({iv.get('censored', 0)} censored)" if iv.get("censored") else ""
    if iv.get("low") is None:
        return f"{iv['mean']:.2f} ({iv['n']} seed){cens}"
    return f"{iv['mean']:.2f} [{max(iv['low'], 0.0):.2f}, {iv['high']:.2f}]{cens}"


def _claims_text(claims: list[dict]) -> str:
    from ..claims import Measurement

    return claims_section("ct_vs_random", [Measurement.from_dict(c) for c in claims])[0]


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
