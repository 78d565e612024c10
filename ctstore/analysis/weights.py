"""Weights across checkpoints and layers (Papers 56, 63, 66).

* :func:`weight_drift`: RMS, relative and cosine change of every matrix between
  two state dicts (SFT drift of Paper 56);
* :func:`layer_norms`: Frobenius norm per layer and matrix kind (Paper 66);
* :func:`centre_position_correlation`: Pearson correlation between each row's
  dominant fitted centre (the μ_k of the largest |A_k|) and the row's position
  (its index, i.e. the frequency rank for embedding-aligned matrices).
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["weight_drift", "layer_norms", "centre_position_correlation"]


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
