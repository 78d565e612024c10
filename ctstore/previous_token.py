"""The previous-token head of ``seed --init bigram_prev`` (issue 18): pure arithmetic, no I/O.

``init="bigram"`` makes the step-0 logits at position i a rank-k factorisation of the
Witten–Bell lag-1 log-conditionals of the current token ``x_i``. ``bigram_prev`` adds
what the token before it says about the next one:

    logits_i(w) ≈ A[x_i] · B[w]  +  β · C[x_{i−1}] · D[w]

with ``C[u] · D[w]`` a rank-``k2`` weighted least-squares fit of the row-centred lag-2
log-ratio ``log P_WB2(w | u two back) − log P_uni(w)`` (smoothed, training counts only).
With β = 1 this is the naive-Bayes product ``P(w | v) · P2(w | u) / P(w)``, which counts
evidence twice when u and v are dependent; β < 1 discounts it (``LAG2_WEIGHT`` in
:mod:`ctstore.seed`, chosen on training windows).

How the model computes it (one head of layer 0, every other residual projection zero):

* the residual stream is split: the bigram embedding lives in the first ``d1 = d − k2 − 1``
  coordinates (rank ``d1 − 2`` plus the two LayerNorm-preimage padding coordinates), the
  lag-2 term in the last ``k2 + 1`` coordinates, in the ``k2`` directions there that are
  orthogonal to the all-ones vector (so LayerNorm's centring leaves it alone);
* query and key of head 0 are constant biases (weights zero) built for rotary embeddings
  so that ``q_i · k_j ∝ Σ_f ρ_f² cos((i − j − 1) θ_f)``, largest at ``j = i − 1``
  (:func:`previous_token_biases`); the scale makes the attention mass on ``i − 1`` at least
  ``mass`` at every position up to the block size (position 0 can only attend to itself);
* value and output of that head map ``ln_1(X[u])`` linearly onto ``C[u]`` in the lag-2
  coordinates, so ``C = ln_1(X) W`` must be linear in the bigram embedding: a reduced-rank
  regression (:func:`lag2_factors`);
* the head's lag-2 columns read it back: ``D``, scaled by the inverse of the small
  embedding scale ``α`` chosen so the lag-2 part has RMS ``LAG2_RMS`` (it then moves the
  final LayerNorm's scale by a few percent, which the head compensates on average).
"""

from __future__ import annotations

import numpy as np

__all__ = ["previous_token_biases", "previous_token_scores", "lag2_factors", "zero_mean_basis"]


def previous_token_scores(head_dim: int, T: int, base: float, n_freq: int | None = None) -> np.ndarray:
    """``s(Δ) = Σ_f cos((Δ − 1) θ_f)`` for Δ = 0..T−1 over the ``n_freq`` fastest rotary frequencies
    (default ``head_dim // 4``): the attention score of offset Δ before scaling."""
    theta = base ** (-np.arange(0, head_dim, 2) / head_dim)
    n_freq = n_freq or max(1, head_dim // 4)
    delta = np.arange(T)[:, None]
    return np.cos((delta - 1) * theta[None, :n_freq]).sum(axis=1)


def previous_token_biases(head_dim: int, T: int, base: float, mass: float = 0.95,
                          n_freq: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Query and key biases ``(q0, k0)`` (head_dim,) and the score scale λ.

    Under rotary embeddings (``ctstore.model._apply_rope``: pair f of position p rotated by
    ``p θ_f``) a query ``q_i = rot(iθ) q0`` and a key ``k_j = rot(jθ) k0`` with ``k0 = rot(θ) q0``
    give ``q_i · k_j = Σ_f |q0_f|² cos((i − j − 1) θ_f)``: content-free, peaked at j = i − 1.
    λ is the smallest scale at which the softmax over all T offsets (the worst position,
    i = T − 1) puts ``mass`` on Δ = 1, found by bisection; ``|q0_f|² = λ √head_dim`` undoes
    the ``1/√head_dim`` of scaled dot-product attention.
    """
    s = previous_token_scores(head_dim, T, base, n_freq)
    if T < 2:
        raise ValueError("previous_token_biases: a block of at least 2 positions")
    gaps = s[1] - np.delete(s, 1)
    if gaps.min() <= 0:
        raise ValueError(f"previous_token_biases: offset 1 is not the unique maximum within {T} positions")

    def mass_at(lam: float) -> float:
        return 1.0 / (1.0 + np.exp(-lam * gaps).sum())

    lo, hi = 0.0, 1.0
    while mass_at(hi) < mass:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mass_at(mid) < mass else (lo, mid)
    lam = hi
    n_freq = n_freq or max(1, head_dim // 4)
    theta = base ** (-np.arange(0, head_dim, 2) / head_dim)
    rho = np.sqrt(lam * np.sqrt(head_dim))
    q0, k0 = np.zeros(head_dim), np.zeros(head_dim)
    for f in range(n_freq):
        q0[2 * f] = rho
        k0[2 * f], k0[2 * f + 1] = rho * np.cos(theta[f]), rho * np.sin(theta[f])
    return q0, k0, float(lam)


def zero_mean_basis(n: int, k: int) -> np.ndarray:
    """``n × k`` orthonormal columns orthogonal to the all-ones vector (k ≤ n − 1), deterministic."""
    if k > n - 1:
        raise ValueError(f"zero_mean_basis: at most {n - 1} directions in {n} coordinates, not {k}")
    centred = np.eye(n)[:, :k] - 1.0 / n
    Q, _ = np.linalg.qr(centred)
    return Q


def lag2_factors(Z: np.ndarray, target: np.ndarray, weights: np.ndarray, rank: int,
                 rcond: float = 1e-8) -> tuple[np.ndarray, np.ndarray, dict]:
    """Reduced-rank regression: ``W`` (d × rank), ``D`` (V × rank) minimising
    ``Σ_u π_u |Z_u W Dᵀ − target_u|²`` with ``π = weights / Σ weights``.

    Solution (Izenman 1975): project the weighted target onto the column space of the weighted
    Z (thin SVD ``√π Z = U S Vᵀ``, singular values below ``rcond · S_max`` dropped), then keep the
    top ``rank`` singular directions of ``Uᵀ √π target``. Returns ``(W, D, info)`` with the
    weighted R² of the linear projection and of the rank-``rank`` fit.
    """
    pi = np.asarray(weights, np.float64)
    pi = pi / pi.sum()
    sq = np.sqrt(pi)[:, None]
    U, S, Vt = np.linalg.svd(sq * Z, full_matrices=False)
    keep = S > rcond * S[0]
    U, S, Vt = U[:, keep], S[keep], Vt[keep]
    Tw = sq * target
    proj = U.T @ Tw  # (r × V)
    P, sig, Qt = np.linalg.svd(proj, full_matrices=False)
    rank = min(rank, len(sig))
    W = Vt.T @ (P[:, :rank] / S[:, None])
    D = Qt[:rank].T * sig[:rank]
    total = float((Tw ** 2).sum())
    info = {"lag2_r2_linear": float((proj ** 2).sum()) / total if total else 0.0,
            "lag2_r2_rank": float((sig[:rank] ** 2).sum()) / total if total else 0.0,
            "lag2_rank": rank}
    return W, D, info
