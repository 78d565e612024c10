"""Blockwise randomized SVD (Halko, Martinsson & Tropp 2011, Algorithms 4.4 + 5.1).

The matrix ``A`` (n_rows × n_cols) is only touched through two functions the
caller supplies, ``matmul(panel) = A·panel`` and ``rmatmul(panel) = Aᵀ·panel``:
this module is pure linear algebra and knows nothing of blocks or schedulers
(:mod:`ctstore.embed.products` builds the two from row blocks on a cluster).
Each power iteration costs one of each, O(nnz · l) with ``l = d + oversample``.

Accuracy: every half-iteration is re-orthonormalised (QR), because plain power
iterations lose the small singular directions in float32. Measured guidance
(ctstore issue 3, Zipf-like 16K log-count matrix, d = 256): q = 2, p = 10
leaves the tail of the spectrum 11% low; q = 4, p = 128 stays within 1.4%;
q = 6, p = 256 within 0.07%. Defaults here: ``power_iters=5``,
``oversample=max(64, d)``.

Signs are normalised so that the largest-magnitude entry of each left singular
vector is positive: results are deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

__all__ = ["RsvdParams", "randomized_svd", "normalize_signs"]


@dataclass(frozen=True)
class RsvdParams:
    oversample: int | None = None
    power_iters: int = 5
    seed: int = 0

    def l(self, d: int, n: int) -> int:
        p = self.oversample if self.oversample is not None else max(64, d)
        return int(min(n, d + p))


def _orth(y: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """Orthonormal basis of y's columns by CholeskyQR2 (GEMM-bound; Householder QR measured 60% of
    the whole SVD here). The Gram matrix and the triangular factor are float64, accumulated over row
    chunks, while the panel stays float32, so no float64 copy of the tall panel is ever made.
    Falls back to Householder QR when the Gram matrix is not positive definite (rank deficiency).
    """
    q = np.ascontiguousarray(y, dtype=np.float32)
    try:
        for _ in range(2):  # the second pass repairs the orthogonality lost to cond(y)^2
            gram = np.zeros((q.shape[1], q.shape[1]), np.float64)
            for r in range(0, q.shape[0], chunk):
                part = q[r:r + chunk].astype(np.float64)
                gram += part.T @ part
            r_factor = np.linalg.cholesky(gram).T
            r_inv = scipy.linalg.solve_triangular(r_factor, np.eye(q.shape[1]), lower=False)
            q = q @ r_inv.astype(np.float32)
    except np.linalg.LinAlgError:
        q, _ = np.linalg.qr(y.astype(np.float64))
    return np.ascontiguousarray(q, dtype=np.float32)


def normalize_signs(u: np.ndarray) -> np.ndarray:
    """Flip each column so that its largest-magnitude entry is positive (deterministic signs)."""
    idx = np.argmax(np.abs(u), axis=0)
    signs = np.sign(u[idx, np.arange(u.shape[1])])
    signs[signs == 0] = 1
    return u * signs


def randomized_svd(matmul, rmatmul, n_rows: int, n_cols: int, d: int, params: RsvdParams = RsvdParams()):
    """Top-``d`` left singular vectors and values of a matrix ``A`` known only through its products.

    ``matmul(panel)`` returns ``A @ panel`` (``n_cols × l`` in, ``n_rows × l``
    out) and ``rmatmul(panel)`` returns ``Aᵀ @ panel``, both float32; where and
    how they run is the caller's business (:mod:`ctstore.embed.products` runs
    them over row blocks on a cluster). Returns ``(U (n_rows × d), S (d,))`` in
    float32, S descending; the right singular vectors are not formed
    (embeddings need only U and S).
    """
    l = params.l(d, min(n_rows, n_cols))
    rng = np.random.default_rng(params.seed)
    omega = rng.standard_normal((n_cols, l), dtype=np.float32)
    q = _orth(matmul(omega))
    for _ in range(params.power_iters):
        z = _orth(rmatmul(q))
        q = _orth(matmul(z))
    bt = rmatmul(q)  # (n_cols × l) = (Qᵀ A)ᵀ = Bᵀ
    # B Bᵀ = btᵀ bt (l × l, float64, accumulated in row chunks) = Z S² Zᵀ, so A ≈ (Q Z) S (...)ᵀ:
    # the left factor and the singular values come from an l × l eigenproblem, and no float64
    # copy of a tall panel is made (the tall float64 SVD was the memory peak of the whole job).
    gram = np.zeros((l, l), np.float64)
    for r in range(0, bt.shape[0], 16384):
        part = bt[r:r + 16384].astype(np.float64)
        gram += part.T @ part
    del bt
    evals, z = np.linalg.eigh(gram)
    order = np.argsort(evals)[::-1][:d]
    s = np.sqrt(np.clip(evals[order], 0, None))
    u = q @ z[:, order].astype(np.float32)
    u = normalize_signs(u)
    return u.astype(np.float32), s.astype(np.float32)
