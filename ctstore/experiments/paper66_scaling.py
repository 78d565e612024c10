"""Scaling (Papers 66, 113): harmonic fit quality vs width, PR vs vocabulary, norms by depth.

* L1 fit R² of trained weights (first-layer Q and c_fc) for each width
  d ∈ ``widths`` and K ∈ {4, 8, d/16}, with compression ratios;
* participation ratio of the transition matrix (row-normalised lag-1 counts on
  the top-V tokens) for V ∈ ``vocab_sizes``;
* amplitude PR: participation ratio of the fitted |A| across rows and Gaussians;
* weight norms by depth of the widest trained model.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp

from ..analysis.harmonic import fit_harmonic
from ..analysis.spectral import participation_ratio
from ..analysis.weights import layer_norms
from ..countstore import CountStore
from ..model import load_model
from ..report import markdown_table, plot_curves, publish_report
from .common import claims_section, prepare, verdict, write_report


def transition_pr(store: CountStore, V: int) -> float:
    top = store.rank[:V].astype(np.int64)
    m = store.matrix(1)[top][:, top].astype(np.float64)
    rows = np.asarray(m.sum(axis=1)).ravel()
    m = sp.diags(1 / np.where(rows > 0, rows, 1)) @ m
    s = np.linalg.svd(m.toarray(), compute_uv=False)
    return participation_ratio(s ** 2)


def run(config: dict, ctx):
    exp = config.get("experiment", {})
    widths = exp.get("widths", [64, 128, 256])
    vocab_sizes = exp.get("vocab_sizes", [256, 512, 1024, 2048])
    tokens, counts = prepare(config, ctx)
    model_base = config.get("model", {})
    runs = {}
    for d in widths:
        emb = ctx.embeddings(counts, {**config.get("k0", {}), "dim": d, "kernel": exp.get("kernel", "none")})
        model = ctx.model(emb, {**model_base, "width": d, "init": "spectral", "seed": 0})
        runs[d] = ctx.run(model, tokens, {**config.get("sft", {}), "seed": 0})
    inputs = {"counts": counts.fingerprint, "runs": [runs[d].fingerprint for d in widths]}

    def write(path: str) -> dict:
        rows, r2 = [], {}
        amp_pr = {}
        for d in widths:
            trained, _, _ = load_model(os.path.join(runs[d].path, "model"))
            q = trained.transformer.h[0].attn.c_attn.weight.detach().double().numpy()[:d]
            fc = trained.transformer.h[0].mlp.c_fc.weight.detach().double().numpy()
            for K in sorted({4, 8, max(1, d // 16)}):
                fq, ffc = fit_harmonic(q, K=K), fit_harmonic(fc, K=K)
                r2[(d, K)] = (fq.r2, ffc.r2)
                rows.append([d, K, fq.r2, ffc.r2, fq.compression_ratio])
                if K == 4:
                    amp_pr[d] = participation_ratio(np.abs(fq.amplitude).ravel())
        store = CountStore.from_artifact(counts)
        prs = [[V, transition_pr(store, V)] for V in vocab_sizes]
        widest, _, _ = load_model(os.path.join(runs[widths[-1]].path, "model"))
        norms = layer_norms(widest.state_dict())
        norm_rows = [[l, *[round(v, 3) for v in kinds.values()]] for l, kinds in norms.items()]
        plot_curves(os.path.join(path, "r2_vs_width.png"),
                    {f"K={K}" if K in (4, 8) else "K=d/16": ([d for d in widths if (d, K) in r2],
                                                             [r2[(d, K)][0] for d in widths if (d, K) in r2])
                     for K in (4, 8)} | {"K=d/16": (widths, [r2[(d, max(1, d // 16))][0] for d in widths])},
                    "width d", "L1 R² (layer-0 Q)", "Harmonic fit quality vs width")
        plot_curves(os.path.join(path, "pr_vs_vocab.png"), {"transition matrix": ([p[0] for p in prs],
                                                                                  [p[1] for p in prs])},
                    "vocabulary size V", "participation ratio", "PR of the lag-1 transition matrix")
        k4 = [r2[(d, 4)][0] for d in widths]
        trend = float(np.polyfit(np.log(widths), k4, 1)[0]) if len(widths) > 1 else 0.0
        pr_growth = prs[-1][1] / prs[0][1] if prs[0][1] else float("nan")
        claims = [
            ["Paper 66", "fixed-K fits lose accuracy as width grows (R² slope in log d < 0)", f"slope {trend:+.3f}",
             verdict(trend < 0)],
            ["Paper 66", "K = d/16 keeps R² level across widths",
             f"{min(r2[(d, max(1, d // 16))][0] for d in widths):.3f}..{max(r2[(d, max(1, d // 16))][0] for d in widths):.3f}",
             verdict(max(r2[(d, max(1, d // 16))][0] for d in widths) - min(r2[(d, max(1, d // 16))][0] for d in widths) < 0.1)],
            ["Paper 113", "transition-matrix PR grows with vocabulary size", f"×{pr_growth:.2f} over the range",
             verdict(pr_growth > 1)],
        ]
        write_report(path, "Papers 66/113: scaling",
                     f"Widths {widths} (model `{model_base.get('config', 'tiny')}` with n_embd = d), same SFT "
                     f"budget; vocabulary sizes {vocab_sizes}.",
                     [markdown_table(["d", "K", "L1 R² Q", "L1 R² c_fc", "compression"], rows),
                      "![R² vs width](r2_vs_width.png)",
                      "## PR of the transition matrix\n\n" + markdown_table(["V", "PR"], prs)
                      + "\n\n![PR vs V](pr_vs_vocab.png)",
                      "## Amplitude PR (K=4, layer-0 Q)\n\n" + markdown_table(["d", "PR"],
                                                                               [[d, v] for d, v in amp_pr.items()]),
                      "## Weight norms by depth (widest model)\n\n"
                      + markdown_table(["layer", *next(iter(norms.values())).keys()], norm_rows),
                      claims_section(claims)])
        return {"summary": {"r2_slope_k4": trend, "pr_growth": pr_growth},
                "r2": {f"{d}-{K}": v for (d, K), v in r2.items()}, "pr": prs, "claims": claims}

    return publish_report(ctx.ws, "paper66_scaling", config, inputs, write, force=ctx.force)
