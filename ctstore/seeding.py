"""The linear algebra of spectral seeding, shared by ``seed`` and ``crystallize`` (docs/design.md §5).

Pure functions on arrays (Paper 113 §5): the eigen-basis of ``EᵀE`` (raw and
centred), the layer matrices (eigenvalue weights rolled against fixed
eigen-directions), seeded orthogonal mixtures and rotations, the rescaling of a
seeded matrix to the norm of the random initialisation it replaces, participation
ratios, a measure of how far a seeded matrix is from a scaled permutation, and
the bigram initialisation's factorisation and LayerNorm preimage. No artifacts,
no I/O.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["eigen_basis", "centred_eigen_basis", "participation_ratio", "weighted", "rolled", "random_orthogonal",
           "basis_rotation", "spectral_layer_matrices", "rescaled", "max_row_energy_share", "bigram_factors",
           "layernorm_preimage"]


def eigen_basis(E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors of ``EᵀE``."""
    lam, U = np.linalg.eigh(E.astype(np.float64).T @ E.astype(np.float64))
    order = np.argsort(lam)[::-1]
    return np.clip(lam[order], 0, None), U[:, order]


def rolled(U: np.ndarray, lam: np.ndarray, shift: int) -> np.ndarray:
    """``diag(√Λ_shift) R_shiftᵀ`` with ``R = roll(U, shift, columns)``."""
    R = np.roll(U, shift, axis=1)
    return np.sqrt(np.roll(lam, shift))[:, None] * R.T


def random_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random d × d orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def basis_rotation(d: int, seed: int) -> np.ndarray:
    """The seeded orthonormal basis of the ``rotated`` recipe."""
    return random_orthogonal(d, np.random.default_rng([seed, 0xBA515]))


def weighted(U: np.ndarray, lam: np.ndarray, shift: int) -> np.ndarray:
    """``diag(√Λ rolled by shift) Uᵀ``: the eigen-directions fixed, their eigenvalue weights rolled.

    Direction i gets weight ``√λ_{i+shift}``, so two shifts differ as functions (each
    emphasises another spectral slice), and ``⟨W_s, W_t⟩_F = Σ_i √λ_{i+s} √λ_{i+t}``,
    the inner product of Paper 113 §5.2's proof. Rolling the eigenvectors together with
    the eigenvalues (:func:`rolled`) only permutes rows: the same function up to a
    relabelling of the hidden coordinates.
    """
    return np.sqrt(np.roll(lam, -shift))[:, None] * U.T


def centred_eigen_basis(E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`eigen_basis` of the rows of E minus their mean (the DC row shared by every token).

    K0 embeddings carry one mean row that holds most of ``EᵀE``'s trace (89% on the
    bundled corpus), so ``√Λ``-weighted layers from the raw ``EᵀE`` are nearly rank 1
    (participation ratio ≈ 1.3). Centring leaves the token-to-token structure.
    """
    E = np.asarray(E, np.float64)
    return eigen_basis(E - E.mean(axis=0, keepdims=True))


def participation_ratio(W) -> float:
    """``(Σ σ²)² / Σ σ⁴`` of a matrix's singular values: 1 for rank 1, min(shape) for a flat spectrum."""
    s2 = np.linalg.svd(np.asarray(W, np.float64), compute_uv=False) ** 2
    return float(s2.sum() ** 2 / (s2 ** 2).sum()) if s2.any() else 0.0


def spectral_layer_matrices(U: np.ndarray, lam: np.ndarray, layer: int, n_layer: int,
                            seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded weights of one block (Paper 113 §5 with functionally distinct layers, issue 18).

    Layer l uses eigenvalue weights rolled by ``s_l = l·d/L`` against fixed eigen-directions
    (:func:`weighted`); Q, K and V use the shifts ``s_l``, ``s_l + d/(3L)``, ``s_l + 2d/(3L)``.
    K and V are further mixed by seeded orthogonal ``O_{l,k}``, ``O_{l,v}`` (per layer): on a
    flat spectrum the weight roll alone changes little (layer output cosines ≈ 0.97 on a
    synthetic flat spectrum), so part of the diversity is seeded randomness, not corpus
    structure; the null model in the reports (a random init) shows how much. Q stays
    unmixed (the ``literal`` recipe's Q is still a scaled permutation for SVD-basis E).
    Attention ``c_proj`` is ``O_{l,o} Vᵀ``: V's adjoint followed by a seeded per-layer rotation of
    the residual stream; the plain adjoint cancels any rotation of V (``VᵀV``), and with
    near-uniform attention at initialisation every layer would write the same vector. The MLP
    blocks j ≥ 1 are mixed by seeded orthogonal ``Q_j`` at shifts ``s_l + j·d/4`` (no twin units).
    """
    d = U.shape[0]
    s = layer * d // n_layer
    step = max(1, d // (3 * n_layer))
    q = weighted(U, lam, s)
    k, v = (random_orthogonal(d, np.random.default_rng([seed, layer, i, 0xA77])).T @ weighted(U, lam, s + i * step)
            for i in (1, 2))
    blocks = [q]
    for j in range(1, 4):
        Q = random_orthogonal(d, np.random.default_rng([seed, layer, j, 0xC7F]))
        blocks.append(Q.T @ weighted(U, lam, s + j * d // 4))
    fc = np.concatenate(blocks, axis=0)
    out = random_orthogonal(d, np.random.default_rng([seed, layer, 3, 0xA77]))
    return {"attn.c_attn.weight": np.concatenate([q, k, v], axis=0), "attn.c_proj.weight": out @ v.T,
            "mlp.c_fc.weight": fc, "mlp.c_proj.weight": fc.T}


def rescaled(new: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``new`` as a tensor of ``like``'s dtype, scaled to ``like``'s Frobenius norm (``like`` if ``new`` is 0)."""
    t = torch.as_tensor(new, dtype=like.dtype)
    norm = t.norm()
    return t * (like.norm() / norm) if norm > 0 else like.clone()


def max_row_energy_share(mats: list[np.ndarray]) -> float:
    """Mean over rows of the largest share of a row's squared norm held by one entry.

    1.0 for a scaled permutation matrix (the literal recipe on SVD-basis embeddings),
    about ``2 ln d / d`` for a random rotation.
    """
    shares = []
    for m in mats:
        sq = np.asarray(m, np.float64) ** 2
        norms = sq.sum(axis=1)
        ok = norms > 0
        shares.append(sq[ok].max(axis=1) / norms[ok])
    return float(np.mean(np.concatenate(shares)))


# --- bigram initialisation (issue 18): step-0 logits = a rank-k factorisation of log P_WB(w | v) ---

def bigram_factors(log_cond: np.ndarray, weights: np.ndarray, rank: int, steps: int = 100,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Factors ``A`` (V × rank), ``B`` (V × rank) with ``softmax(A Bᵀ)`` ≈ the rows of ``exp(log_cond)``.

    Start: truncated SVD of the row-centred log-conditionals (softmax ignores a per-row
    constant). Then ``steps`` full-batch Adam steps on the context-weighted cross-entropy
    ``Σ_v π(v) · H(P_v, softmax(A_v Bᵀ))`` with ``π = weights / Σ weights`` (the training
    frequency of v as a left context): the expected per-token training loss of the factorised
    bigram, which is what the model's first logits are scored on. Returns ``(A, B, info)``,
    ``info`` holding the weighted cross-entropy of the target itself (its entropy), after the
    SVD and after the fit, in nats.
    """
    L = torch.as_tensor(log_cond, dtype=torch.float32)
    P = L.exp()
    pi = torch.as_tensor(np.asarray(weights, np.float64) / max(float(np.sum(weights)), 1e-300), dtype=torch.float32)
    Lc = L - L.mean(dim=1, keepdim=True)
    torch.manual_seed(seed)
    U, S, Vr = torch.svd_lowrank(Lc, q=min(rank + 10, min(L.shape)), niter=4)  # Lc ≈ U diag(S) Vrᵀ
    root = S[:rank].sqrt()
    A = (U[:, :rank] * root).clone().requires_grad_(True)
    B = (Vr[:, :rank] * root).clone().requires_grad_(True)

    def weighted_ce():
        return -(pi * (P * torch.log_softmax(A @ B.T, dim=1)).sum(dim=1)).sum()

    info = {"target_entropy": float(-(pi * (P * L).sum(dim=1)).sum())}
    with torch.no_grad():
        info["svd_ce"] = float(weighted_ce())
    opt = torch.optim.Adam([A, B], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = weighted_ce()
        loss.backward()
        opt.step()
    with torch.no_grad():
        info["fit_ce"] = float(weighted_ce())
    info["fit_steps"] = steps
    return A.detach().cpu().double().numpy(), B.detach().cpu().double().numpy(), info


def layernorm_preimage(A: np.ndarray, B: np.ndarray, d: int, rms: float = 0.02,
                       eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Embedding rows X (V × d) and head rows W (V × d) with ``LayerNorm(X_v) W_wᵀ = A_v · B_w`` exactly.

    A LayerNorm (γ = 1, β = 0) centres each row and scales it to unit RMS, so ``A_v``
    alone is not reproduced. With ``rank = d − 2`` two padding coordinates ``(p, q)``
    per row make every row zero-mean and of one common norm R:
    ``p + q = −Σ A_v`` and ``p² + q² = R² − |A_v|²``. Every row is then scaled to RMS
    ``rms`` (default 0.02, the random init's embedding scale), so LayerNorm multiplies
    every row by the same constant, which the head ``W = [B, 0, 0]·R/√d·√(rms²+eps)/rms``
    undoes.
    """
    V, k = A.shape
    if k != d - 2:
        raise ValueError(f"layernorm_preimage: rank {k} must be d - 2 = {d - 2}")
    s = A.sum(axis=1)
    need = (A ** 2).sum(axis=1) + s ** 2 / 2
    R2 = float(need.max()) * 1.01 + 1e-12
    t = np.sqrt(np.maximum(2 * (R2 - (A ** 2).sum(axis=1)) - s ** 2, 0.0))
    X = np.concatenate([A, ((-s + t) / 2)[:, None], ((-s - t) / 2)[:, None]], axis=1)
    R = np.sqrt(R2)
    X *= rms * np.sqrt(d) / R
    W = np.concatenate([B, np.zeros((B.shape[0], 2))], axis=1) * (R / np.sqrt(d)) * np.sqrt(rms ** 2 + eps) / rms
    return X, W
