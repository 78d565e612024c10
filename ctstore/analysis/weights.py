"""Weights across checkpoints and layers; 1-D Gaussian mixtures (Papers 51, 56, 63).

* :func:`weight_drift`: RMS, relative and cosine change of every matrix between
  two state dicts (SFT drift of Paper 56);
* :func:`layer_norms`: Frobenius norm per layer and matrix kind (Paper 66);
* :func:`centre_position_correlation`: Pearson correlation between each row's
  dominant fitted centre (the μ_k of the largest |A_k|) and the row's position
  (its index, i.e. the frequency rank for embedding-aligned matrices);
* :func:`gmm_1d`: a K-component 1-D Gaussian mixture fitted by EM, seeded and
  deterministic (Paper 51 step 2 fits singular vectors this way).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

__all__ = ["weight_drift", "layer_norms", "centre_position_correlation", "gmm_1d", "GMM"]


def _np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, np.float64)


def weight_drift(before: dict, after: dict) -> dict:
    """Per-matrix drift: ``rms`` of the change, ``relative`` = ‖Δ‖/‖W₀‖, ``cosine`` of W₀ and W₁."""
    out = {}
    for name, w0 in before.items():
        if name not in after:
            continue
        a, b = _np(w0), _np(after[name])
        if a.ndim < 2:
            continue
        delta = b - a
        n0 = np.linalg.norm(a)
        out[name] = {"rms": float(np.sqrt((delta ** 2).mean())),
                     "relative": float(np.linalg.norm(delta) / n0) if n0 else float("inf"),
                     "cosine": float((a * b).sum() / (n0 * np.linalg.norm(b) + 1e-300))}
    return out


def layer_norms(state: dict) -> dict:
    """``{layer: {matrix kind: Frobenius norm}}`` for ``transformer.h.<l>.*.weight`` matrices."""
    out: dict = {}
    for name, w in state.items():
        m = re.match(r"transformer\.h\.(\d+)\.(.+)\.weight$", name)
        if m and _np(w).ndim == 2:
            out.setdefault(int(m.group(1)), {})[m.group(2)] = float(np.linalg.norm(_np(w)))
    return dict(sorted(out.items()))


def centre_position_correlation(amplitude: np.ndarray, centre: np.ndarray) -> float:
    dominant = centre[np.arange(centre.shape[0]), np.argmax(np.abs(amplitude), axis=1)]
    pos = np.arange(centre.shape[0], dtype=np.float64)
    if dominant.std() == 0:
        return 0.0
    return float(np.corrcoef(pos, dominant)[0, 1])


@dataclass
class GMM:
    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    log_likelihood: float
    iterations: int

    def density(self, x) -> np.ndarray:
        x = np.asarray(x, np.float64)[:, None]
        return (self.weights * np.exp(-(x - self.means) ** 2 / (2 * self.variances))
                / np.sqrt(2 * np.pi * self.variances)).sum(axis=1)


def gmm_1d(x, K: int, iterations: int = 200, tol: float = 1e-8, seed: int = 0, sample_weight=None) -> GMM:
    """Fit a K-component 1-D Gaussian mixture by EM (quantile initialisation, variance floor).

    ``sample_weight`` weights the points (e.g. positions weighted by a singular
    vector's squared entries, to describe where along the rank axis its energy sits).
    """
    x = np.asarray(x, np.float64).ravel()
    if x.size < K:
        raise ValueError(f"gmm_1d: {x.size} points for {K} components")
    sw = np.ones_like(x) if sample_weight is None else np.asarray(sample_weight, np.float64).ravel()
    sw = sw * (x.size / sw.sum())
    rng = np.random.default_rng(seed)
    order = np.argsort(x)
    cdf = np.cumsum(sw[order]) / sw.sum()
    means = x[order][np.searchsorted(cdf, (np.arange(K) + 0.5) / K).clip(max=x.size - 1)]
    means = means + 1e-9 * rng.standard_normal(K)
    var = float(np.average((x - np.average(x, weights=sw)) ** 2, weights=sw))
    floor = 1e-6 * (var + 1e-12)
    variances = np.full(K, var / K + floor)
    weights = np.full(K, 1.0 / K)
    previous = -np.inf
    for it in range(1, iterations + 1):
        log_p = (np.log(weights) - 0.5 * np.log(2 * np.pi * variances)
                 - (x[:, None] - means) ** 2 / (2 * variances))
        top = log_p.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(log_p - top).sum(axis=1))
        resp = np.exp(log_p - log_norm[:, None]) * sw[:, None]
        nk = resp.sum(axis=0) + 1e-12
        weights = nk / x.size
        means = (resp * x[:, None]).sum(axis=0) / nk
        variances = (resp * (x[:, None] - means) ** 2).sum(axis=0) / nk + floor
        ll = float((sw * log_norm).sum())
        if abs(ll - previous) < tol * abs(ll):
            break
        previous = ll
    order = np.argsort(means)
    return GMM(weights[order], means[order], variances[order], ll, it)
