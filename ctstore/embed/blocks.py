"""The weighted co-occurrence operator of K0, built blockwise from a count store (docs/design.md §4).

``D = Σ_k w_k lag_k`` (``+ Dᵀ`` when symmetric), restricted to the active set
(the top ``V_eff`` tokens by frequency rank), then a transform: ``log1p`` or
PPMI (``max(0, log P(a,b) / (P(a) P_α(b)))`` with context smoothing α).

The matrix stays in token-id row blocks, as sparse CSR *pieces* in the job's
scratch (:mod:`ctstore.formats.csr` at a Location every task reaches:
:mod:`ctstore.formats.scratch`), so no step holds more than one block
plus dense panels. Block sizes (non-zeros per block) come from the memory plan
(:mod:`ctstore.embed.budget`). The transform is applied when a piece is read
(:func:`load_block`), since PPMI needs global row/column sums gathered while
the pieces are written. The symmetric sum goes through a shuffle: each block
spills its transposed entries bucketed by destination block; a second pass
adds them in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import CtstoreError
from ..formats.counts import CountStore
from ..formats.csr import load_csr, save_csr
from ..formats.scratch import load_array, save_array, suffixed
from ..location import Location

__all__ = ["OperatorSpec", "build_operator", "load_block", "lag_weights", "row_entries", "plan_row_blocks_by_nnz"]


def lag_weights(lags: list[int], weighting: str) -> list[float]:
    if weighting == "uniform":
        return [1.0] * len(lags)
    if weighting == "inverse-distance":
        return [1.0 / k for k in lags]
    raise CtstoreError(f"--weighting must be uniform or inverse-distance, not {weighting!r}")


@dataclass(frozen=True)
class OperatorSpec:
    """Everything a task needs to read transformed operator blocks."""

    scratch: Location
    n_vocab: int
    blocks: tuple  # ((r0, r1), ...) token-id row ranges
    transform: str  # log1p | ppmi
    ppmi_alpha: float
    total: float = 0.0

    def piece(self, r0: int) -> Location:
        return self.scratch.child(f"op-{r0:07d}")


def _read_weighted_block(store: CountStore, r0: int, r1: int, lags: list[int], weights: list[float],
                         is_active: np.ndarray) -> sp.csr_matrix:
    total = None
    for lag, w in zip(lags, weights):
        block = store.row_block(lag, r0, r1).astype(np.float32)
        if w != 1.0:
            block.data *= np.float32(w)
        total = block if total is None else total + block
    total = total.tocsr()
    # restrict to the active set: zero inactive rows and columns, then drop them
    row_active = is_active[r0:r1]
    coo = total.tocoo()
    keep = row_active[coo.row] & is_active[coo.col]
    return sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=total.shape)


def weighted_block_task(store: CountStore, r0, r1, lags, weights, is_active, prefix, symmetric, blocks):
    """Pass A: weighted, restricted D rows [r0, r1); spill transposed buckets if symmetric.

    ``store`` arrives pickled as its URL, storage options and chunk list (see
    :func:`_portable`), so a worker reaches an object store as the client does.
    """
    m = _read_weighted_block(store, r0, r1, lags, weights, is_active)
    try:
        save_csr(prefix, m)
        if symmetric:
            coo = m.tocoo()
            cols = coo.col
            for b0, b1 in blocks:
                sel = (cols >= b0) & (cols < b1)
                save_array(suffixed(prefix, f".T{b0:07d}.npy"),
                           np.stack([cols[sel] - b0, coo.row[sel] + r0]).astype(np.int64))
                save_array(suffixed(prefix, f".T{b0:07d}.val.npy"), coo.data[sel])
    except OSError as exc:
        raise CtstoreError(f"{prefix}: cannot write operator block ({exc.strerror or exc})") from None
    rowsum = np.zeros(m.shape[1], np.float64)
    rowsum[r0:r1] = np.asarray(m.sum(axis=1)).ravel()
    colsum = np.bincount(m.indices, weights=m.data, minlength=m.shape[1])
    return rowsum, colsum


def symmetric_block_task(spec_prefixes: tuple, r0: int, r1: int, n_vocab: int, out_prefix: Location) -> int:
    """Pass B: D[r0:r1] + (Dᵀ)[r0:r1] from the own piece and every block's transposed bucket."""
    own = load_csr(spec_prefixes[0], (r1 - r0, n_vocab)).tocoo()
    rows, cols, vals = [own.row], [own.col], [own.data]
    for prefix in spec_prefixes[1]:
        rc = load_array(suffixed(prefix, f".T{r0:07d}.npy"))
        rows.append(rc[0])
        cols.append(rc[1])
        vals.append(load_array(suffixed(prefix, f".T{r0:07d}.val.npy")))
    m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(r1 - r0, n_vocab))
    m.sum_duplicates()
    save_csr(out_prefix, m)
    return m.nnz


def row_entries(store: CountStore, lags: list[int]) -> np.ndarray:
    """Stored non-zeros of each token-id row over ``lags``: an upper bound of the operator's row entries."""
    return sum(np.diff(store.indptr(k)) for k in lags)


def _portable(store: CountStore) -> CountStore:
    """The same store with nothing opened or cached yet, to ship to tasks (URL, options, chunk list)."""
    return CountStore(store.url, store.storage_options, store.listed_chunks)


def plan_row_blocks_by_nnz(row_nnz: np.ndarray, target: int) -> tuple:
    """Consecutive row ranges of about ``target`` non-zeros each (a row with more stands alone)."""
    ends = np.cumsum(row_nnz)
    blocks, r0 = [], 0
    n = row_nnz.size
    while r0 < n:
        base = ends[r0 - 1] if r0 else 0
        r1 = int(np.searchsorted(ends, base + target, side="right"))
        r1 = max(r1, r0 + 1)
        blocks.append((r0, min(r1, n)))
        r0 = min(r1, n)
    return tuple(blocks)


def build_operator(store: CountStore, runner, scratch: Location | str, *, lags: list[int], weights: list[float],
                   symmetric: bool, active: np.ndarray, transform: str, ppmi_alpha: float,
                   block_entries: int, row_nnz: np.ndarray | None = None) -> OperatorSpec:
    """Write operator pieces for the active set in row blocks of about ``block_entries`` non-zeros.

    ``lags`` and ``weights`` give ``D = Σ weights[i] · lag_{lags[i]}``; ``row_nnz``
    is :func:`row_entries` when the caller already has it. ``scratch`` is where
    tasks write the pieces (a Location every worker reaches; a string is a local path).
    """
    V = store.n_vocab
    if max(lags) > store.lags or min(lags) < 1:
        raise CtstoreError(f"lags {lags}: the count store has lags 1..{store.lags}")
    is_active = np.zeros(V, dtype=bool)
    is_active[active] = True
    row_nnz = row_entries(store, lags) if row_nnz is None else row_nnz
    blocks = plan_row_blocks_by_nnz(row_nnz, block_entries)
    scratch = scratch if isinstance(scratch, Location) else Location.of(scratch)
    spec = OperatorSpec(scratch, V, blocks, transform, ppmi_alpha)
    # unsymmetric: pass A writes the final pieces (no rename: object stores have none)
    prefixes = [scratch.child(f"d-{r0:07d}") if symmetric else spec.piece(r0) for r0, _ in blocks]
    portable = _portable(store)
    jobs = [(portable, r0, r1, lags, weights, is_active, p, symmetric, blocks)
            for (r0, r1), p in zip(blocks, prefixes)]
    sums = runner.map_reduce(weighted_block_task, jobs,
                             lambda acc, x: x if acc is None else (acc[0] + x[0], acc[1] + x[1]),
                             desc="k0 operator")
    rowsum, colsum = sums
    if symmetric:
        jobs = [((p, prefixes), r0, r1, V, spec.piece(r0)) for (r0, r1), p in zip(blocks, prefixes)]
        runner.map(symmetric_block_task, jobs, desc="k0 symmetric")
        rowsum = colsum = rowsum + colsum
    total = float(rowsum.sum())
    if total <= 0:
        raise CtstoreError(f"{store.url}: no co-occurrences among the {len(active)} active tokens")
    save_array(scratch.child("rowsum.npy"), rowsum)
    save_array(scratch.child("colsum.npy"), colsum)
    return OperatorSpec(scratch, V, blocks, transform, ppmi_alpha, total)


def load_block(spec: OperatorSpec, r0: int, r1: int) -> sp.csr_matrix:
    """Transformed operator rows [r0, r1) (float32 CSR, token-id columns)."""
    m = load_csr(spec.piece(r0), (r1 - r0, spec.n_vocab))
    if spec.transform == "log1p":
        np.log1p(m.data, out=m.data)
    elif spec.transform == "ppmi":
        rowsum = load_array(spec.scratch.child("rowsum.npy"), mmap=True)
        colsum = load_array(spec.scratch.child("colsum.npy"))
        ctx = colsum ** spec.ppmi_alpha
        ctx /= ctx.sum()
        rows = np.repeat(np.arange(r0, r1), np.diff(m.indptr))
        pmi = np.log(m.data.astype(np.float64) / spec.total) - np.log(rowsum[rows] / spec.total) \
            - np.log(ctx[m.indices])
        m.data = np.maximum(pmi, 0).astype(np.float32)
        m.eliminate_zeros()
    else:
        raise CtstoreError(f"unknown transform {spec.transform!r} (log1p or ppmi)")
    return m
