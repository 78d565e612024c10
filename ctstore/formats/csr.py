"""Scratch format of sparse operator blocks: a CSR matrix as three ``.npy`` files beside a prefix.

``<prefix>.indptr.npy`` (int64), ``<prefix>.indices.npy`` (int32, sorted within
each row) and ``<prefix>.data.npy`` (float32). The k0 stage writes its operator
blocks this way in the job's scratch (:mod:`ctstore.formats.scratch`): a
:class:`~ctstore.location.Location` every task reaches. On a local disk
``np.load`` with ``mmap_mode`` reads them back without a copy, which the many
passes of a randomized SVD rely on; on an object store each file is one object,
read whole. A *rank block* adds ``<prefix>.rows.npy``: the rank-order row
index of each of its rows, so a token-id row block can feed a rank-ordered matrix.

Never published: scratch lives for one job and is removed when it ends. A
prefix may be given as a local path (a string) or a Location.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..location import Location
from .scratch import load_array, save_array, suffixed

__all__ = ["save_csr", "load_csr", "save_rank_block", "load_rank_block"]


def _at(prefix: Location | str, suffix: str) -> Location:
    return suffixed(prefix if isinstance(prefix, Location) else Location.of(prefix), suffix)


def save_csr(prefix: Location | str, m: sp.csr_matrix) -> int:
    """Write ``m`` (its indices sorted in place first) as the three ``.npy`` files of ``prefix``; returns bytes."""
    m.sort_indices()
    return (save_array(_at(prefix, ".indptr.npy"), m.indptr.astype(np.int64))
            + save_array(_at(prefix, ".indices.npy"), m.indices.astype(np.int32))
            + save_array(_at(prefix, ".data.npy"), m.data.astype(np.float32)))


def load_csr(prefix: Location | str, shape: tuple[int, int], mmap: bool = False) -> sp.csr_matrix:
    """The CSR matrix at ``prefix``; with ``mmap`` a local block's data and indices are memory-mapped (read-only)."""
    return sp.csr_matrix((load_array(_at(prefix, ".data.npy"), mmap),
                          load_array(_at(prefix, ".indices.npy"), mmap),
                          load_array(_at(prefix, ".indptr.npy"))), shape=shape)


def save_rank_block(prefix: Location | str, rows: np.ndarray, m: sp.csr_matrix) -> int:
    """A rank block: ``m``'s row ``i`` is row ``rows[i]`` of the rank-ordered matrix; returns bytes."""
    return save_csr(prefix, m) + save_array(_at(prefix, ".rows.npy"), rows)


def load_rank_block(prefix: Location | str, n_cols: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """``(rank row indices, CSR rows × n_cols)`` of a block written by :func:`save_rank_block` (memory-mapped)."""
    rows = load_array(_at(prefix, ".rows.npy"))
    return rows, load_csr(prefix, (rows.size, n_cols), mmap=True)
