"""Spectral measures of embeddings and weights (Papers 56, 66, 113).

* participation ratio ``PR = (Σλ)² / Σλ²`` (flat spectrum of n values → n,
  one non-zero value → 1). For a matrix, λ are the eigenvalues of ``WᵀW``
  (squared singular values): PR counts the effective number of directions;
* spectral gap ratio ``(λ₁ − λ₂) / λ₁`` (Paper 113 §5);
* eigenvalue pairing: the fraction of consecutive eigenvalue pairs that agree
  to a relative tolerance (circulant K0 pairs cos/sin modes, Paper 56).
"""

from __future__ import annotations

import numpy as np

__all__ = ["participation_ratio", "matrix_participation_ratio", "spectral_gap_ratio", "pairing_fraction"]


def participation_ratio(spectrum) -> float:
    lam = np.abs(np.asarray(spectrum, np.float64))
    s2 = float((lam ** 2).sum())
    return float(lam.sum() ** 2 / s2) if s2 > 0 else 0.0


def matrix_participation_ratio(w) -> float:
    s = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)
    return participation_ratio(s ** 2)


def spectral_gap_ratio(eigenvalues) -> float:
    lam = np.sort(np.abs(np.asarray(eigenvalues, np.float64)))[::-1]
    return float((lam[0] - lam[1]) / lam[0]) if lam.size > 1 and lam[0] > 0 else 0.0


def pairing_fraction(spectrum, rtol: float = 1e-3) -> float:
    """Share of eigenvalues that have an equal neighbour (sorted descending)."""
    lam = np.sort(np.abs(np.asarray(spectrum, np.float64)))[::-1]
    if lam.size < 2:
        return 0.0
    close = np.isclose(lam[1:], lam[:-1], rtol=rtol, atol=0)
    paired = np.zeros(lam.size, bool)
    paired[1:] |= close
    paired[:-1] |= close
    return float(paired.mean())
