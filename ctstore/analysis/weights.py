"""Weights across checkpoints and layers (Papers 56, 66).

* :func:`weight_drift`: RMS, relative and cosine change of every matrix between
  two state dicts (SFT drift of Paper 56);
* :func:`layer_norms`: Frobenius norm per layer and matrix kind (Paper 66).
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["weight_drift", "layer_norms"]


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
