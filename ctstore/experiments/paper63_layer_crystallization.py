"""Per-layer crystallization (Paper 63): what happens when one layer's ``c_proj`` stops learning.

For each chosen layer (``[experiment] layers``, default all) the same seeded
model is fine-tuned four ways, the attention ``c_proj`` of that layer being
``trained`` (the reference), ``frozen`` at its seeded value, replaced by its
``rank1`` approximation and frozen, or ``random`` (a fresh Gaussian of the same
Frobenius norm) and frozen. The report gives final validation losses and the
participation ratio of every layer's ``c_proj`` after training.
"""

from __future__ import annotations

import numpy as np
import torch

from ..analysis.spectral import matrix_participation_ratio
from ..model import load_model
from ..report import markdown_table, publish_report
from .common import claims_section, prepare, verdict, write_report

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


def run(config: dict, ctx):
    exp = config.get("experiment", {})
    tokens, counts = prepare(config, ctx)
    emb = ctx.embeddings(counts, {**config.get("k0", {}), "kernel": exp.get("kernel", "none")})
    base = ctx.model(emb, {**config.get("model", {}), "init": "spectral", "seed": 0})
    n_layer = load_model(base.path)[0].config.n_layer
    layers = exp.get("layers", list(range(n_layer)))
    sft = config.get("sft", {})
    reference = ctx.run(base, tokens, {**sft, "seed": 0})
    runs = {}
    for layer in layers:
        name = f"transformer.h.{layer}.attn.c_proj"
        runs[(layer, "trained")] = reference
        runs[(layer, "frozen")] = ctx.run(base, tokens, {**sft, "seed": 0, "freeze": [name]})
        rank1 = ctx.derived_model(base, f"rank1-cproj-{layer}", _rank1(layer))
        runs[(layer, "rank1")] = ctx.run(rank1, tokens, {**sft, "seed": 0, "freeze": [name]})
        rnd = ctx.derived_model(base, f"random-cproj-{layer}", _random(layer, 0))
        runs[(layer, "random")] = ctx.run(rnd, tokens, {**sft, "seed": 0, "freeze": [name]})
    inputs = {"model": base.fingerprint, "runs": sorted({r.fingerprint for r in runs.values()})}

    def write(path: str) -> dict:
        import os

        rows, table = [], {}
        for layer in layers:
            losses = {m: runs[(layer, m)].manifest["final_val_loss"] for m in MODES}
            table[layer] = losses
            rows.append([layer, *[losses[m] for m in MODES], losses["rank1"] - losses["trained"]])
        trained, _, _ = load_model(os.path.join(reference.path, "model"))
        prs = [[l, matrix_participation_ratio(trained.transformer.h[l].attn.c_proj.weight.detach().numpy())]
               for l in range(n_layer)]
        worst_frozen = max(table[l]["frozen"] - table[l]["trained"] for l in layers)
        worst_rank1 = max(table[l]["rank1"] - table[l]["trained"] for l in layers)
        random_cost = float(np.mean([table[l]["random"] - table[l]["trained"] for l in layers]))
        claims = [
            ["Paper 63", "a seeded c_proj can be frozen with little loss increase (≤ 0.05 nats)",
             f"worst +{worst_frozen:.3f}", verdict(worst_frozen <= 0.05)],
            ["Paper 63", "a rank-1 c_proj, frozen, costs little (≤ 0.1 nats)", f"worst +{worst_rank1:.3f}",
             verdict(worst_rank1 <= 0.1)],
            ["Paper 63", "a random frozen c_proj costs more than a crystallized one", f"mean +{random_cost:.3f}",
             verdict(random_cost > max(worst_frozen, 0))],
        ]
        write_report(path, "Paper 63: per-layer crystallization of c_proj",
                     f"Seeded model `{base.fingerprint}`; every run has the same SFT budget "
                     f"({sft.get('steps', 200)} steps). Final validation loss (nats).",
                     [markdown_table(["layer", *MODES, "rank1 − trained"], rows),
                      "## Participation ratio of c_proj after training\n\n"
                      + markdown_table(["layer", "PR"], prs), claims_section(claims)])
        return {"summary": {"worst_frozen": worst_frozen, "worst_rank1": worst_rank1, "random_cost": random_cost},
                "losses": {str(k): v for k, v in table.items()}, "pr": prs, "claims": claims}

    return publish_report(ctx.ws, "paper63_layer_crystallization", config, inputs, write, force=ctx.force)
