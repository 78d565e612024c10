"""Scratch format of sparse operator blocks: a CSR matrix as three ``.npy`` files beside a prefix.

``<prefix>.indptr.npy`` (int64), ``<prefix>.indices.npy`` (int32, sorted within
each row) and ``<prefix>.data.npy`` (float32). The k0 stage writes its operator
blocks this way in a local scratch directory: ``np.load`` with ``mmap_mode``
reads them back without a copy, which the many passes of a randomized SVD rely
on. A *rank block* adds ``<prefix>.rows.npy``: the rank-order row index of
each of its rows, so a token-id row block can feed a rank-ordered matrix.

Never published: scratch lives for one job and is removed when it ends.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["save_csr", "load_csr", "save_rank_block", "load_rank_block"]


def save_csr(prefix: str, m: sp.csr_matrix) -> None:
    """Write ``m`` (its indices sorted in place first) as the three ``.npy`` files of ``prefix``."""
    m.sort_indices()
    np.save(f"{prefix}.indptr.npy", m.indptr.astype(np.int64))
    np.save(f"{prefix}.indices.npy", m.indices.astype(np.int32))
    np.save(f"{prefix}.data.npy", m.data.astype(np.float32))


def load_csr(prefix: str, shape: tuple[int, int], mmap: bool = False) -> sp.csr_matrix:
    """The CSR matrix at ``prefix``; with ``mmap`` its data and indices are memory-mapped (read-only)."""
    mode = "r" if mmap else None
    return sp.csr_matrix((np.load(f"{prefix}.data.npy", mmap_mode=mode),
                          np.load(f"{prefix}.indices.npy", mmap_mode=mode),
                          np.load(f"{prefix}.indptr.npy")), shape=shape)


def save_rank_block(prefix: str, rows: np.ndarray, m: sp.csr_matrix) -> None:
    """A rank block: ``m``'s row ``i`` is row ``rows[i]`` of the rank-ordered matrix."""
    save_csr(prefix, m)
    np.save(f"{prefix}.rows.npy", rows)


def load_rank_block(prefix: str, n_cols: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """``(rank row indices, CSR rows × n_cols)`` of a block written by :func:`save_rank_block` (memory-mapped)."""
    rows = np.load(f"{prefix}.rows.npy")
    return rows, load_csr(prefix, (rows.size, n_cols), mmap=True)
