"""Scaling (Papers 66, 113): harmonic fit quality vs width, PR vs vocabulary, norms by depth.

* L1 fit R² of trained weights (first-layer Q and c_fc) for each width
  d ∈ ``widths`` and K ∈ {4, 8, d/16}, with compression ratios;
* participation ratio of the antisymmetric part of the transition matrix M
  (row-normalised lag-1 counts on the top-V tokens; Paper 66's "asymmetric PR",
  our reading) and of its symmetric part, for V ∈ ``vocab_sizes``;
* amplitude PR: the dimensionality (PR of the covariance eigenvalues) of the
  rows' K=8 amplitude vectors;
* weight norms by depth of the widest trained model.

Every seed (``[experiment] seeds``: randomized SVD, model and SFT) trains one
model per width; claims get 95% intervals over seeds. The transition-matrix PR
depends on the corpus only.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp
import torch

from ..analysis.harmonic import fit_harmonic
from ..analysis.spectral import participation_ratio
from ..analysis.weights import layer_norms
from ..claims import construction, exact, paired, with_null
from ..model import PhotonicGPT
from ..formats.counts import CountStore
from ..formats.model import load_model, model_dir
from ..report import markdown_table, plot_curves, publish_report
from .common import claims_section, prepare, seeds_of, write_report


def transition_matrix(store: CountStore, V: int) -> np.ndarray:
    top = store.rank[:V].astype(np.int64)
    m = store.matrix(1)[top][:, top].astype(np.float64)
    rows = np.asarray(m.sum(axis=1)).ravel()
    return (sp.diags(1 / np.where(rows > 0, rows, 1)) @ m).toarray()


def transition_prs(store: CountStore, V: int) -> dict:
    """PR of the antisymmetric part (M − Mᵀ)/2 and of the symmetric part of the top-V transition matrix M.

    PR = (Σσ²)²/Σσ⁴ over singular values σ. The antisymmetric part's eigenvalues come in ±iω pairs, so its PR
    is 2 when one rotation plane dominates: our reading of Paper 66's "asymmetric PR" 2.00 (the "2D
    asymmetry floor") beside a "symmetric PR" of 1.01. Both parts are symmetric in the sense that σ² are
    the eigenvalues of a symmetric matrix (AᵀA, S²), so ``eigvalsh`` does it without an SVD.
    """
    m = transition_matrix(store, V)
    a, sym = (m - m.T) / 2, (m + m.T) / 2
    return {"antisymmetric": participation_ratio(np.clip(np.linalg.eigvalsh(a.T @ a), 0, None)),
            "symmetric": participation_ratio(np.linalg.eigvalsh(sym) ** 2)}


def amplitude_pr(amplitude: np.ndarray) -> float:
    """PR of the covariance eigenvalues of the rows' amplitude vectors (rows × K): their dimensionality."""
    a = np.asarray(amplitude, np.float64)
    return participation_ratio(np.linalg.eigvalsh(np.cov(a, rowvar=False)))


def _noise_like(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A null matrix: i.i.d. Gaussian with ``w``'s shape and Frobenius norm."""
    z = rng.standard_normal(w.shape)
    return z * (np.linalg.norm(w) / np.linalg.norm(z))


def slope_per_doubling(widths, values) -> float:
    return float(np.polyfit(np.log2(widths), values, 1)[0]) if len(widths) > 1 else float("nan")


def layer_totals(state: dict) -> list[float]:
    """Frobenius norm of each layer's matrices taken together, by depth."""
    return [float(np.sqrt(sum(v ** 2 for v in kinds.values()))) for kinds in layer_norms(state).values()]


def run(config: dict, ctx):
    exp = config["experiment"]  # checked, defaults included: experiments/config.py Paper66Config
    widths, vocab_sizes = exp["widths"], exp["vocab_sizes"]
    seeds = seeds_of(config)
    tokens, counts = prepare(config, ctx)
    model_base = config.get("model", {})
    runs = {}
    for seed in seeds:
        for d in widths:
            emb = ctx.embeddings(counts, {**config.get("k0", {}), "dim": d, "kernel": exp["kernel"],
                                          "seed": seed})
            model = ctx.model(emb, {**model_base, "width": d, "init": "spectral", "seed": seed})
            runs[(seed, d)] = ctx.run(model, tokens, {**config.get("sft", {}), "seed": seed})
    inputs = {"counts": counts.fingerprint, "runs": [runs[(s, d)].fingerprint for s in seeds for d in widths]}

    def write(path: str) -> dict:
        r2, comp, amp_pr, norms = {}, {}, {}, {}
        r2_null, amp_null, norms_null = {}, {}, {}  # null models (issue 18)
        for seed in seeds:
            rng = np.random.default_rng([seed, 0x66])
            for d in widths:
                trained, _, _ = load_model(model_dir(runs[(seed, d)]))
                q = trained.transformer.h[0].attn.c_attn.weight.detach().double().numpy()[:d]
                fc = trained.transformer.h[0].mlp.c_fc.weight.detach().double().numpy()
                q0, fc0 = (_noise_like(w, rng) for w in (q, fc))  # white noise, same shape and norm
                for K in sorted({4, 8, max(1, d // 16)}):
                    fq, ffc = fit_harmonic(q, K=K), fit_harmonic(fc, K=K)
                    r2[(seed, d, K)] = (fq.r2, ffc.r2)
                    comp[(d, K)] = fq.compression_ratio
                    nq, nfc = fit_harmonic(q0, K=K), fit_harmonic(fc0, K=K)
                    r2_null[(seed, d, K)] = (nq.r2, nfc.r2)
                    if K == 8:
                        amp_pr[(seed, d)] = (amplitude_pr(fq.amplitude), amplitude_pr(ffc.amplitude))
                        amp_null[(seed, d)] = (amplitude_pr(nq.amplitude), amplitude_pr(nfc.amplitude))
            widest, _, _ = load_model(model_dir(runs[(seed, widths[-1])]))
            norms[seed] = layer_totals(widest.state_dict())
            torch.manual_seed(seed)
            norms_null[seed] = layer_totals(PhotonicGPT(widest.config).state_dict())
        mean = lambda xs: float(np.mean(xs))  # noqa: E731
        rows = [[d, K, mean([r2[(s, d, K)][0] for s in seeds]), mean([r2[(s, d, K)][1] for s in seeds]), comp[(d, K)]]
                for d in widths for K in sorted({4, 8, max(1, d // 16)})]
        store = CountStore.from_artifact(counts)
        pr_by_v = {V: transition_prs(store, V) for V in vocab_sizes}
        prs = [[V, p["antisymmetric"], p["symmetric"]] for V, p in pr_by_v.items()]
        pr_values = np.array([p[1] for p in prs])
        exponent = float(np.polyfit(np.log(vocab_sizes), np.log(pr_values), 1)[0]) if len(prs) > 1 else float("nan")
        plot_curves(os.path.join(path, "r2_vs_width.png"),
                    {label: (widths, [mean([r2[(s, d, k(d))][0] for s in seeds]) for d in widths])
                     for label, k in (("K=4", lambda d: 4), ("K=8", lambda d: 8),
                                      ("K=d/16", lambda d: max(1, d // 16)))},
                    "width d", "L1 R² (layer-0 Q)", "Harmonic fit quality vs width")
        plot_curves(os.path.join(path, "pr_vs_vocab.png"),
                    {"antisymmetric part": (vocab_sizes, list(pr_values)),
                     "symmetric part": (vocab_sizes, [p[2] for p in prs])},
                    "vocabulary size V", "participation ratio", "PR of the lag-1 transition matrix")
        def weight_claims(r2_: dict, amp_: dict, norms_: dict) -> list:
            return [
                paired("p66.r2_falls_with_width", [slope_per_doubling(widths, [r2_[(s, d, 4)][0] for d in widths])
                                                   for s in seeds]),
                paired("p66.k_scales_with_d", [slope_per_doubling(widths, [r2_[(s, d, max(1, d // 16))][0]
                                                                            for d in widths]) for s in seeds],
                       note=f"K = {[max(1, d // 16) for d in widths]}"),
                paired("p66.amplitude_pr", [mean([v for (s2, d), pair in amp_.items() if s2 == s for v in pair])
                                            for s in seeds]),
                paired("p66.norms_fall_with_depth", [(norms_[s][-1] - norms_[s][0]) / norms_[s][0] for s in seeds],
                       note=f"{len(norms_[seeds[0]])} layers, d = {widths[-1]}"),
            ]

        ours = weight_claims(r2, amp_pr, norms)
        nulls = weight_claims(r2_null, amp_null, norms_null)
        labels = ["white noise, same shape and norm"] * 3 + ["random init, widest model"]
        ours = [with_null(m, n, label) for m, n, label in zip(ours, nulls, labels)]
        measured = [
            ours[0], ours[1],
            exact("p66.pr_two", float(pr_values.mean()), float(pr_values.min()), float(pr_values.max()),
                  interval=f"range over V = {vocab_sizes}"),
            exact("p66.pr_exponent", exponent, note=f"V = {vocab_sizes}"),
            ours[2], ours[3],
            construction("p66.compression_grows", ", ".join(f"{comp[(d, 4)]:.1f}× at d={d}" for d in widths)),
        ]
        claims_text, claims = claims_section("paper66_scaling", measured)
        norm_rows = [[l, mean([norms[s][l] for s in seeds])] for l in range(len(norms[seeds[0]]))]
        amp_rows = [[d, mean([amp_pr[(s, d)][0] for s in seeds]), mean([amp_pr[(s, d)][1] for s in seeds])]
                    for d in widths]
        write_report(path, "Papers 66/113: scaling",
                     f"Widths {widths} (model `{model_base.get('config', 'tiny')}` with n_embd = d), same SFT "
                     f"budget, seeds {seeds}; vocabulary sizes {vocab_sizes}. Means over seeds.",
                     [markdown_table(["d", "K", "L1 R² Q", "L1 R² c_fc", "compression"], rows),
                      "![R² vs width](r2_vs_width.png)",
                      "## PR of the transition matrix\n\n"
                      + markdown_table(["V", "asymmetric PR ((M − Mᵀ)/2)", "symmetric PR ((M + Mᵀ)/2)"], prs)
                      + "\n\n![PR vs V](pr_vs_vocab.png)",
                      "## Amplitude PR (K=8, layer 0)\n\n" + markdown_table(["d", "Q", "c_fc"], amp_rows),
                      "## Weight norm by depth (widest model, all of a layer's matrices)\n\n"
                      + markdown_table(["layer", "Frobenius norm"], norm_rows),
                      claims_text])
        return {"summary": {"seeds": seeds, "pr_exponent": exponent, **{m["id"]: m["value"] for m in claims}},
                "r2": {f"{s}-{d}-{K}": v for (s, d, K), v in r2.items()}, "pr": prs,
                "amplitude_pr": {f"{s}-{d}": v for (s, d), v in amp_pr.items()},
                "norms": {str(s): v for s, v in norms.items()}, "claims": claims}

    return publish_report(ctx.ws, "paper66_scaling", config, inputs, write, force=ctx.force, version=3)
