"""Recursive crystallization (Paper 56): L1 and L2 harmonic fits of a CT-seeded-and-trained model.

The nine matrices (Paper 56's table spans embedding, attention and MLP weights;
this is our reading of it): the token embedding's active rows, and for the
first layer Q, K, V, attention c_proj, MLP c_fc, MLP c_proj, and for the last
layer Q and MLP c_fc. For each: L1 fit (K Gaussians per row) R², MSE and
compression; L2 fit (Gaussians over the rows of every L1 parameter) and the
full reconstruction R². Also: the spectrum of E and its eigenvalue pairing,
the correlation of fitted centres with spectral position, and SFT drift.
"""

from __future__ import annotations

import os

import numpy as np

from ..analysis.harmonic import fit_harmonic, fit_l2
from ..analysis.spectral import pairing_fraction, participation_ratio
from ..analysis.weights import centre_position_correlation, weight_drift
from ..k0 import load_embeddings
from ..model import load_model
from ..report import markdown_table, plot_curves, publish_report
from .common import claims_section, prepare, verdict, write_report


def nine_matrices(model, n_active: int) -> dict:
    d = model.config.n_embd
    first, last = model.transformer.h[0], model.transformer.h[-1]
    w = lambda t: t.detach().double().numpy()  # noqa: E731
    return {
        "wte (active rows)": w(model.transformer.wte.weight)[:n_active],
        "L0 Q": w(first.attn.c_attn.weight)[:d], "L0 K": w(first.attn.c_attn.weight)[d:2 * d],
        "L0 V": w(first.attn.c_attn.weight)[2 * d:], "L0 attn c_proj": w(first.attn.c_proj.weight),
        "L0 c_fc": w(first.mlp.c_fc.weight), "L0 mlp c_proj": w(first.mlp.c_proj.weight),
        f"L{len(model.transformer.h) - 1} Q": w(last.attn.c_attn.weight)[:d],
        f"L{len(model.transformer.h) - 1} c_fc": w(last.mlp.c_fc.weight),
    }


def run(config: dict, ctx):
    exp = config.get("experiment", {})
    K, K2 = int(exp.get("K", 4)), int(exp.get("K2", 4))
    ridge = float(exp.get("ridge", 1e-5))  # amplitude penalty: no cancelling giants (harmonic.RIDGE)
    tokens, counts = prepare(config, ctx)
    emb = ctx.embeddings(counts, {**config.get("k0", {}), "kernel": exp.get("kernel", "circulant")})
    model_art = ctx.model(emb, {**config.get("model", {}), "init": "spectral", "seed": 0})
    run_art = ctx.run(model_art, tokens, {**config.get("sft", {}), "seed": 0})
    inputs = {"embeddings": emb.fingerprint, "model": model_art.fingerprint, "run": run_art.fingerprint}

    def write(path: str) -> dict:
        seeded, _, _ = load_model(model_art.path)
        trained, _, _ = load_model(os.path.join(run_art.path, "model"))
        n_active = min(int(config.get("model", {}).get("vocab") or 4096), trained.config.vocab_size - 1)
        rows, fits = [], {}
        for name, w in nine_matrices(trained, n_active).items():
            l1 = fit_harmonic(w, K=K, ridge=ridge)
            l2 = fit_l2(w, l1, K2=K2)
            fits[name] = {"l1_r2": l1.r2, "l1_mse": l1.mse, "compression": l1.compression_ratio,
                          "l2_full_r2": l2.full_r2, "l2_series_r2_median": float(np.nanmedian(l2.series_r2)),
                          "centre_position_corr": centre_position_correlation(l1.amplitude, l1.centre)}
            rows.append([name, f"{w.shape[0]}×{w.shape[1]}", l1.r2, l1.compression_ratio, l2.full_r2,
                         fits[name]["centre_position_corr"]])
        E, spectrum, active, _ = load_embeddings(emb)
        lam = np.linalg.eigvalsh(E[active].astype(np.float64).T @ E[active].astype(np.float64))[::-1]
        pairing, pr = pairing_fraction(lam, rtol=1e-3), participation_ratio(lam)
        drift = weight_drift(seeded.state_dict(), trained.state_dict())
        rel = {k: v["relative"] for k, v in drift.items()}
        plot_curves(os.path.join(path, "spectrum.png"), {"eigenvalues of EᵀE": (list(range(lam.size)), list(lam))},
                    "index", "eigenvalue", "Spectrum of the embedding", logy=True)
        mean_l1 = float(np.mean([f["l1_r2"] for f in fits.values()]))
        mean_l2 = float(np.mean([f["l2_full_r2"] for f in fits.values()]))
        mean_corr = float(np.mean([abs(f["centre_position_corr"]) for f in fits.values()]))
        median_drift = float(np.median(list(rel.values())))
        n_cols = nine_matrices(trained, n_active)["L0 Q"].shape[1]
        claims = [
            ["Paper 56", f"L1 Gaussian fits (K={K}) describe trained CT weights (mean R² ≥ 0.9)", f"{mean_l1:.3f}",
             verdict(mean_l1 >= 0.9)],
            ["Paper 56", f"compression {n_cols}/(3K) = {n_cols / (3 * K):.1f}× per row at K={K}",
             f"{n_cols / (3 * K):.1f}×", verdict(True)],
            ["Paper 56", "L2 fits of L1 parameters rebuild W (mean full R² ≥ 0.8)", f"{mean_l2:.3f}",
             verdict(mean_l2 >= 0.8)],
            ["Paper 56", "E's eigenvalues pair up (pairing fraction ≥ 0.8)", f"{pairing:.2f}",
             verdict(pairing >= 0.8)],
            ["Paper 56", "fitted centres follow spectral position (mean |corr| ≥ 0.5)", f"{mean_corr:.2f}",
             verdict(mean_corr >= 0.5)],
            ["Paper 56", "SFT moves crystallized weights little (median relative drift ≤ 0.5)",
             f"{median_drift:.3f}", verdict(median_drift <= 0.5)],
        ]
        write_report(path, "Paper 56: recursive crystallization",
                     f"Embeddings `{emb.fingerprint}` ({emb.manifest.get('operator_note')}), model "
                     f"`{model_art.fingerprint}`, SFT run `{run_art.fingerprint}` "
                     f"(final val ppl {run_art.manifest['final_val_ppl']:.1f}). L1: K={K}, amplitude penalty "
                     f"{ridge:g}·n·‖A‖²; L2: K2={K2}.",
                     [markdown_table(["matrix", "shape", "L1 R²", "compression", "L2 full R²", "centre corr"], rows),
                      f"Spectrum of EᵀE: participation ratio {pr:.2f}, pairing fraction {pairing:.2f}.\n\n"
                      "![spectrum](spectrum.png)",
                      "## SFT drift (relative ‖ΔW‖/‖W₀‖)\n\n" + markdown_table(
                          ["matrix", "relative drift"], [[k, v] for k, v in sorted(rel.items())]),
                      claims_section(claims)])
        return {"summary": {"mean_l1_r2": mean_l1, "mean_l2_full_r2": mean_l2, "pairing": pairing, "pr": pr,
                            "median_drift": median_drift}, "fits": fits, "drift": drift, "claims": claims}

    return publish_report(ctx.ws, "paper56_recursive", config, inputs, write, force=ctx.force, version=2)
