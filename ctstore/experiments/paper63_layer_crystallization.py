"""Per-layer crystallization (Paper 63): what happens when one layer's ``c_proj`` stops learning.

For each chosen layer (``[experiment] layers``, default all) and each seed
(``[experiment] seeds``: embeddings' randomized SVD, model and SFT) the same
seeded model is fine-tuned four ways, the attention ``c_proj`` of that layer
being ``trained`` (the reference), ``frozen`` at its seeded value, replaced by
its ``rank1`` approximation and frozen, or ``random`` (a fresh Gaussian of the
same Frobenius norm) and frozen. The report gives final validation losses, the
participation ratio of every layer's ``c_proj`` and ``c_attn`` after training,
and Paper 63's claims with 95% intervals over seeds (paired per seed: every
mode is compared with the trained run of the same seed).
"""

from __future__ import annotations

import numpy as np
import torch

from ..analysis.spectral import matrix_participation_ratio
from ..claims import paired, with_null
from ..model import PhotonicGPT
from ..formats.model import load_model, model_dir
from ..report import markdown_table, publish_report
from .common import claims_section, prepare, seeds_of, write_report

MODES = ("trained", "frozen", "rank1", "random")


def _rank1(layer: int):
    def transform(model):
        w = model.transformer.h[layer].attn.c_proj.weight
        u, s, vt = torch.linalg.svd(w.detach().double())
        approx = (s[0] * torch.outer(u[:, 0], vt[0])).to(w.dtype)
        with torch.no_grad():
            w.copy_(approx * (w.norm() / approx.norm()))
    return transform


def _random(layer: int, seed: int):
    def transform(model):
        w = model.transformer.h[layer].attn.c_proj.weight
        g = torch.Generator().manual_seed(seed + 7919 * layer)
        fresh = torch.randn(w.shape, generator=g, dtype=w.dtype)
        with torch.no_grad():
            w.copy_(fresh * (w.norm() / fresh.norm()))
    return transform


def relative_costs(losses: dict, layers: list) -> dict:
    """Per-seed claim values from ``{(layer, mode): final val loss}``, each a mean over ``layers``."""
    def rel(layer, mode):
        return (losses[(layer, mode)] - losses[(layer, "trained")]) / losses[(layer, "trained")]

    best_other = lambda layer: min(losses[(layer, m)] for m in ("trained", "frozen", "rank1"))  # noqa: E731
    return {"frozen": float(np.mean([rel(l, "frozen") for l in layers])),
            "rank1": float(np.mean([rel(l, "rank1") for l in layers])),
            "random_vs_best": float(np.mean([(losses[(l, "random")] - best_other(l)) / losses[(l, "trained")]
                                             for l in layers]))}


def run(config: dict, ctx):
    exp = config["experiment"]  # checked, defaults included: experiments/config.py Paper63Config
    seeds = seeds_of(config)
    kernel = exp["kernel"]
    tokens, counts = prepare(config, ctx)
    sft = config.get("sft", {})
    bases, runs = {}, {}
    for seed in seeds:
        emb = ctx.embeddings(counts, {**config.get("k0", {}), "kernel": kernel, "seed": seed})
        base = bases[seed] = ctx.model(emb, {**config.get("model", {}), "init": "spectral", "seed": seed})
        n_layer = load_model(model_dir(base))[0].config.n_layer
        layers = [int(l) for l in exp.get("layers", list(range(n_layer)))]
        reference = ctx.run(base, tokens, {**sft, "seed": seed})
        for layer in layers:
            name = f"transformer.h.{layer}.attn.c_proj"
            runs[(seed, layer, "trained")] = reference
            runs[(seed, layer, "frozen")] = ctx.run(base, tokens, {**sft, "seed": seed, "freeze": [name]})
            rank1 = ctx.derived_model(base, f"rank1-cproj-{layer}", _rank1(layer))
            runs[(seed, layer, "rank1")] = ctx.run(rank1, tokens, {**sft, "seed": seed, "freeze": [name]})
            rnd = ctx.derived_model(base, f"random-cproj-{layer}-{seed}", _random(layer, seed))
            runs[(seed, layer, "random")] = ctx.run(rnd, tokens, {**sft, "seed": seed, "freeze": [name]})
    inputs = {"models": [bases[s].fingerprint for s in seeds],
              "runs": sorted({r.fingerprint for r in runs.values()})}

    def write(path: str) -> dict:
        costs, prs, table = {}, {}, {}
        for seed in seeds:
            losses = {(l, m): runs[(seed, l, m)].manifest["final_val_loss"] for l in layers for m in MODES}
            table[seed] = losses
            costs[seed] = relative_costs(losses, layers)
            trained, _, _ = load_model(model_dir(runs[(seed, layers[0], "trained")]))
            d = trained.config.n_embd
            prs[seed] = {l: {"c_proj": matrix_participation_ratio(h.attn.c_proj.weight.detach().numpy()),
                             "c_attn": matrix_participation_ratio(h.attn.c_attn.weight.detach().numpy())}
                         for l, h in enumerate(trained.transformer.h)}
        n_layer = len(prs[seeds[0]])
        null_prs = {}  # null model (issue 18): a random init of the same config; PR is scale-free
        for seed in seeds:
            torch.manual_seed(seed)
            rnd = PhotonicGPT(trained.config)
            null_prs[seed] = {l: {"c_proj": matrix_participation_ratio(h.attn.c_proj.weight.detach().numpy()),
                                  "c_attn": matrix_participation_ratio(h.attn.c_attn.weight.detach().numpy())}
                              for l, h in enumerate(rnd.transformer.h)}

        def pr_claims(p: dict) -> list:
            return [paired("p63.cproj_high_pr", [min(p[s][l]["c_proj"] for l in range(n_layer)) / d for s in seeds],
                           note=f"d = {d}"),
                    paired("p63.cproj_below_cattn", [np.mean([p[s][l]["c_proj"] - p[s][l]["c_attn"]
                                                              for l in range(n_layer)]) for s in seeds])]

        pr_rows_measured = [with_null(m, n, "random init, same shapes")
                            for m, n in zip(pr_claims(prs), pr_claims(null_prs))]

        def change(layer, mode):  # mean over seeds of the change relative to the trained run, in %
            t = [table[s][(layer, "trained")] for s in seeds]
            return f"{100 * np.mean([(table[s][(layer, mode)] - t[i]) / t[i] for i, s in enumerate(seeds)]):+.2f}%"

        rows = [[l, *[float(np.mean([table[s][(l, m)] for s in seeds])) for m in MODES],
                 *[change(l, m) for m in MODES[1:]]] for l in layers]
        pr_rows = [[l, float(np.mean([prs[s][l]["c_attn"] for s in seeds])),
                    float(np.mean([prs[s][l]["c_proj"] for s in seeds]))] for l in range(n_layer)]
        measured = [
            paired("p63.frozen_no_cost", [costs[s]["frozen"] for s in seeds]),
            paired("p63.rank1_no_cost", [costs[s]["rank1"] for s in seeds]),
            paired("p63.random_best", [costs[s]["random_vs_best"] for s in seeds]),
            *pr_rows_measured,
        ]
        claims_text, claims = claims_section("paper63_layer_crystallization", measured)
        write_report(path, "Paper 63: per-layer crystallization of c_proj",
                     f"Seeded models {', '.join(f'`{bases[s].fingerprint}`' for s in seeds)} (seeds {seeds}); every "
                     f"run has the same SFT budget ({sft.get('steps', 200)} steps; Paper 63: 50 steps). Final "
                     "validation loss (nats), mean over seeds, and the change relative to the trained run.",
                     [markdown_table(["layer", *MODES, "frozen vs trained", "rank1 vs trained", "random vs trained"],
                                     rows),
                      "## Participation ratio after training (PR = (Σσ²)²/Σσ⁴; mean over seeds)\n\n"
                      + markdown_table(["layer", "c_attn PR", "c_proj PR"], pr_rows), claims_text])
        return {"summary": {"seeds": seeds, **{m["id"]: m["value"] for m in claims}},
                "losses": {str(s): {f"{l}-{m}": v for (l, m), v in table[s].items()} for s in seeds},
                "costs": {str(s): costs[s] for s in seeds},
                "pr": {str(s): {str(l): v for l, v in prs[s].items()} for s in seeds}, "claims": claims}

    return publish_report(ctx.ws, "paper63_layer_crystallization", config, inputs, write, force=ctx.force, version=3)
