"""Comparing two embeddings of the same tokens without aligning their bases."""

from __future__ import annotations

import numpy as np

__all__ = ["embedding_agreement"]


def embedding_agreement(a: np.ndarray, b: np.ndarray, sample: int = 1024, seed: int = 0) -> float:
    """Pearson correlation of pairwise cosine similarities over a seeded sample of rows.

    Rotation-invariant, so it compares what two embeddings say about which tokens
    are alike (used for hierarchical vs dense K0, Paper 113 prediction 3).
    """
    rng = np.random.default_rng(seed)
    idx = rng.choice(a.shape[0], size=min(sample, a.shape[0]), replace=False)

    def cosines(x):
        x = x[idx].astype(np.float64)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        c = x @ x.T
        return c[np.triu_indices(len(idx), 1)]

    ca, cb = cosines(a), cosines(b)
    if ca.std() == 0 or cb.std() == 0:
        return 0.0
    return float(np.corrcoef(ca, cb)[0, 1])
