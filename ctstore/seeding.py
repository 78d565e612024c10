"""The linear algebra of spectral seeding, shared by ``seed`` and ``crystallize`` (docs/design.md §5).

Pure functions on arrays (Paper 113 §5): the eigen-basis of ``EᵀE``, the rolled
layer matrices ``M_l = diag(√Λ_l) R_lᵀ``, seeded orthogonal mixtures and
rotations, the rescaling of a seeded matrix to the norm of the random
initialisation it replaces, and a measure of how far a seeded matrix is from a
scaled permutation. No artifacts, no I/O.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["eigen_basis", "rolled", "random_orthogonal", "basis_rotation", "spectral_layer_matrices", "rescaled",
           "max_row_energy_share"]


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


def spectral_layer_matrices(U: np.ndarray, lam: np.ndarray, layer: int, n_layer: int,
                            seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded weights of one block; the MLP blocks j ≥ 1 are mixed by orthogonal ``Q_j`` (no twin units)."""
    d = U.shape[0]
    s = layer * d // n_layer
    M = rolled(U, lam, s)
    blocks = [M]
    for j in range(1, 4):
        Q = random_orthogonal(d, np.random.default_rng([seed, layer, j, 0xC7F]))
        blocks.append(Q.T @ rolled(U, lam, s + j * d // 4))
    fc = np.concatenate(blocks, axis=0)
    return {"attn.c_attn.weight": np.concatenate([M, M, M], axis=0), "attn.c_proj.weight": M.T,
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
