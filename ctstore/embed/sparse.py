"""``--kernel none|ppmi``: the truncated SVD of the sparse operator itself (the *semantic* alternatives).

Each operator block is first written once in rank coordinates (a *rank block*,
:mod:`ctstore.formats.csr`), for the many passes that follow. Then one of two
solvers (``--solver``):

* ``rsvd``: the randomized range finder (:func:`~ctstore.embed.rsvd.randomized_svd`)
  with the products run blockwise on the cluster (:mod:`ctstore.embed.products`);
  it never holds the operator;
* ``svds``: ARPACK Lanczos (``scipy.sparse.linalg.svds``) on the whole operator
  gathered in the client, refused at plan time when the operator (bounded from
  the store's row counts) and the Lanczos basis do not fit ``--memory``.

``auto`` takes rsvd: on the real-text operator of issue 12 it was faster than
svds at the same spectrum (benchmarks/RESULTS.md). The choice and its reason
are printed and kept in the artifact.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import scipy.sparse as sp

from ..errors import CtstoreError
from ..formats.counts import CountStore
from ..formats.csr import load_rank_block, save_rank_block
from ..units import format_bytes, parse_memory
from .blocks import load_block
from .budget import MemoryPlan, fit
from .products import block_products
from .rsvd import RsvdParams, normalize_signs, randomized_svd

__all__ = ["svds_bytes", "operator_nnz_bound", "choose_solver", "plan", "embed", "svds_blocks"]

# svds in the client: gathering the blocks into one float64 CSR (COO triples, the CSR, the row
# permutation) peaks near 32 bytes per non-zero; ARPACK keeps 2d+1 Lanczos vectors and returns U
SVDS_BYTES_PER_NNZ = 32


def svds_bytes(nnz: int, n: int, d: int) -> int:
    """Client memory of the svds solver: the gathered operator plus ARPACK's basis and U (float64)."""
    return int(nnz * SVDS_BYTES_PER_NNZ + n * (2 * d + 1) * 8 + 2 * n * d * 8)


def rsvd_bytes(n: int, l: int) -> tuple[int, int]:
    """``(per task, client)`` of the blockwise randomized SVD of an n × n operator with l columns per panel:
    a task holds the shared panel and its output; the client Ω/Y, Q, Z, the Aᵀ·Q accumulator and a
    gathered partial (float32 n × l each)."""
    panel = n * l * 4
    return 2 * panel, 5 * panel


def operator_nnz_bound(store: CountStore, lags: list[int], active: np.ndarray, symmetric: bool) -> int:
    """Non-zeros of the restricted operator, bounded above by the stored rows of the active tokens."""
    is_active = np.zeros(store.n_vocab, bool)
    is_active[active] = True
    nnz = sum(int(np.diff(store.indptr(k))[is_active].sum()) for k in lags)
    return nnz * (2 if symmetric else 1)


def choose_solver(params, nnz: int, n: int, memory, scheduler) -> tuple[str, str]:
    """``(solver, reason)`` for a sparse-operator SVD: svds when it fits the budget next to the cluster."""
    need = svds_bytes(nnz, n, params.dim)
    if params.solver == "rsvd":
        return "rsvd", "requested (--solver rsvd)"
    if params.dim >= n - 1:
        if params.solver == "svds":
            raise CtstoreError(f"--solver svds needs --dim < V_eff - 1 (d={params.dim}, V_eff={n})")
        return "rsvd", f"svds needs d < V_eff - 1 (d={params.dim}, V_eff={n})"
    try:
        fit("svds", 0, need, memory, scheduler)
        fits = True
    except CtstoreError:
        fits = False
    budget = format_bytes(parse_memory(memory))
    if params.solver == "svds":
        if not fits:
            raise CtstoreError(f"--solver svds: the operator (<= {nnz:,} non-zeros) needs {format_bytes(need)} in "
                               f"the client, more than --memory {budget} leaves (use --solver rsvd)")
        return "svds", f"requested (--solver svds; needs {format_bytes(need)} of --memory {budget})"
    # auto: measured on the real-text operator of issue 12 (V_eff 16,384, lag 1, d = 256), the randomized
    # range finder (q = 5, p = 256) took 18-22 CPU-s and svds 24 (tol 1e-6) to 37 (tol 0) CPU-s at the same
    # spectrum (2e-5 apart), so svds is not preferred by default; it stays available where it fits
    if fits:
        return "rsvd", (f"auto: randomized range finder (measured faster than svds on a real-text operator; "
                        f"svds would fit here: {format_bytes(need)} of --memory {budget})")
    return "rsvd", (f"auto: randomized range finder (svds would need {format_bytes(need)} in the client, more than "
                    f"--memory {budget} leaves)")


def plan(solver: str, nnz: int, n: int, params, memory, scheduler, **fit_args) -> MemoryPlan:
    """Memory of the chosen solver: svds gathers the operator in the client; rsvd holds panels."""
    if solver == "svds":
        return fit("svds", 0, svds_bytes(nnz, n, params.dim), memory, scheduler, **fit_args)
    l = RsvdParams(params.oversample, params.power_iters, params.seed).l(params.dim, n)
    task, client = rsvd_bytes(n, l)
    return fit(f"randomized SVD (V_eff={n}, l={l})", task, client, memory, scheduler,
               hint="lower --dim, --oversample or --v-eff, or raise --memory", **fit_args)


def rank_block_task(spec, block_group, inv_rank: np.ndarray, n: int) -> int:
    """Write each block transformed and in rank coordinates once, for the many SVD passes."""
    for r0, r1 in block_group:
        block = load_block(spec, r0, r1)
        rows = inv_rank[r0:r1]
        keep = np.flatnonzero(rows >= 0)
        block = block[keep]
        block = sp.csr_matrix((block.data, inv_rank[block.indices].astype(np.int32), block.indptr),
                              shape=(keep.size, n))
        save_rank_block(_rank_prefix(spec.scratch, r0), rows[keep], block)
    return len(block_group)


def _rank_prefix(scratch, r0: int):
    return scratch.child(f"rank-{r0:07d}")


def _load_rank_block(scratch, n: int, r0: int, r1: int):
    return load_rank_block(_rank_prefix(scratch, r0), n)


def embed(runner, spec, groups, inv_rank: np.ndarray, n: int, params, solver: str):
    """``(rows, spectrum, {}, None)``: ``U_d · √S_d`` of the transformed operator (rank order)."""
    runner.map(rank_block_task, [(spec, grp, inv_rank, n) for grp in groups], desc="k0 rank blocks")
    load = partial(_load_rank_block, spec.scratch, n)
    if solver == "svds":
        u, s = svds_blocks(load, list(spec.blocks), n, params.dim, params.seed)
    else:
        matmul, rmatmul = block_products(runner, load, list(spec.blocks), n, n_tasks=len(groups))
        u, s = randomized_svd(matmul, rmatmul, n, n, params.dim,
                              RsvdParams(params.oversample, params.power_iters, params.seed))
    return (u * np.sqrt(s)).astype(np.float32), s, {}, None


def svds_blocks(load, blocks, n: int, d: int, seed: int):
    """Top-d ``(U (n × d) float32, S (d,))`` of the n × n operator given by rank blocks, by ARPACK
    (``scipy.sparse.linalg.svds``) on the whole operator gathered in float64; deterministic start
    vector from ``seed``, S descending, signs as :func:`ctstore.embed.rsvd.normalize_signs`."""
    import scipy.sparse.linalg as spla

    parts = [load(r0, r1) for r0, r1 in blocks]
    rows = np.concatenate([p[0] for p in parts])
    stacked = sp.vstack([p[1] for p in parts], format="csr", dtype=np.float64)
    del parts
    order = np.argsort(rows)
    if rows.size != n or not np.array_equal(rows[order], np.arange(n)):
        raise CtstoreError(f"k0 svds: operator blocks cover {rows.size} of {n} rows")
    a = stacked[order]  # rank order
    del stacked
    v0 = np.random.default_rng(seed).standard_normal(n)
    try:
        u, s, _ = spla.svds(a, k=d, v0=v0, solver="arpack", return_singular_vectors="u")
    except spla.ArpackNoConvergence:
        raise CtstoreError(f"k0 svds: ARPACK did not converge for d={d} (try --solver rsvd)") from None
    order = np.argsort(s)[::-1]
    u = normalize_signs(u[:, order])
    return u.astype(np.float32), s[order].astype(np.float32)
