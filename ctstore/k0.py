"""Stage ``k0``: count store → ``embeddings`` artifact (docs/design.md §4; Papers 51, 113).

Operators (``kernel`` × ``method``):

* ``circulant`` + ``exact`` (default): the seeds' K0 through the circulant
  identity (:mod:`ctstore.circulant`): one streaming pass over the non-zeros
  gives the diagonal sums g, then ``r = g ⊛ k0`` and an analytic SVD. Cost
  O(nnz + V log V); no dense matrix anywhere.
* ``circulant`` or a kernel file + ``fft2``: the literal formula, out of core
  (:mod:`ctstore.fft2`), then a blockwise randomized SVD of the dense W. For
  checking the identity and for general kernels (``.npy``: a length-n first row
  of a circulant, or an n × n array).
* ``none``: truncated SVD of X itself (log1p counts); ``ppmi``: of PPMI.
  These are the *semantic* alternatives; the circulant operators produce
  Fourier features of frequency rank, and the artifact says which is which.
  Solver (``--solver``): ``svds`` (ARPACK Lanczos on the whole sparse operator,
  gathered in the client; refused at plan time when the operator, bounded from
  the store's row counts, and the Lanczos basis do not fit the memory budget
  next to the cluster) or ``rsvd`` (the blockwise randomized range finder,
  :mod:`ctstore.rsvd`, which never holds the operator). ``auto`` takes rsvd:
  on the real-text operator of issue 12 it was faster than svds at the same
  spectrum (benchmarks/RESULTS.md). The choice and its reason are printed and
  kept in the artifact, and the resolved solver is part of the fingerprint
  (the two give slightly different embeddings).

``--hierarchical`` (Paper 113 §4.2, exact method only): G = ⌈√V_eff⌉ groups of
consecutive frequency ranks (character features are not used: tokens of
synthetic streams have none), a G×G group operator and within-group operators
from the same pass, K0 at both levels, ``E[v] = [E_group(group(v)), E_within(v)]``
(d/2 dimensions each); memory O(V).

Embeddings: ``E = U_d · sqrt(S_d)`` for active tokens (row = token id);
inactive tokens get seeded N(0, σ²) rows with σ = 1% of the active rows' RMS.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np

from .errors import CtstoreError
from .log import log, stopwatch
from .units import format_bytes, parse_memory
from .circulant import circulant_embedding, diagonal_sums
from .cluster import Runner, plan_cluster, round_robin
from .formats.counts import CountStore
from .memory import TreeMemorySampler
from .operator import OperatorSpec, build_operator, load_block
from .rsvd import RsvdParams, randomized_svd_blocks
from .workspace import Workspace, build_artifact, fingerprint

__all__ = ["K0Params", "K0Plan", "plan_k0", "embed_counts", "OPERATOR_NOTES"]

FORMAT_VERSION = 1
KERNELS = ("circulant", "none", "ppmi")
SOLVERS = ("auto", "svds", "rsvd")
# svds in the client: gathering the blocks into one float64 CSR (COO triples, the CSR, the row
# permutation) peaks near 32 bytes per non-zero; ARPACK keeps 2d+1 Lanczos vectors and returns U
SVDS_BYTES_PER_NNZ = 32
OPERATOR_NOTES = {
    "circulant": "circulant K0 (Papers 51/113): real Fourier modes of frequency rank, not learned semantics",
    "none": "randomized SVD of the co-occurrence matrix X (semantic)",
    "ppmi": "randomized SVD of PPMI (semantic)",
    "file": "user kernel through the literal 2-D FFT formula",
}


@dataclass(frozen=True)
class K0Params:
    dim: int = 128
    lags: int | None = None  # default: every lag in the store
    lag_from: int = 1  # use lags lag_from..lags (a band, as crystallize does per layer)
    weighting: str = "uniform"  # uniform | inverse-distance | comma-separated weights, one per lag
    symmetric: bool = False
    v_eff: int | str = "auto"
    transform: str = "log1p"
    ppmi_alpha: float = 1.0
    kernel: str = "circulant"
    method: str = "exact"
    hierarchical: bool = False
    oversample: int | None = None
    power_iters: int = 5
    seed: int = 0
    solver: str = "auto"  # auto | svds | rsvd (kernel none/ppmi only)

    def __post_init__(self):
        if self.kernel == "ppmi" and self.transform != "ppmi":
            object.__setattr__(self, "transform", "ppmi")
        if self.transform not in ("log1p", "ppmi"):
            raise CtstoreError(f"--transform must be log1p or ppmi, not {self.transform!r}")
        if self.kernel not in KERNELS and not self.kernel.endswith(".npy"):
            raise CtstoreError(f"--kernel must be one of {', '.join(KERNELS)} or a .npy file, not {self.kernel!r}")
        if self.method not in ("exact", "fft2"):
            raise CtstoreError(f"--method must be exact or fft2, not {self.method!r}")
        if self.kernel.endswith(".npy") and self.method != "fft2":
            raise CtstoreError("a kernel file needs --method fft2 (the exact identity is for circulant k0)")
        if self.hierarchical and (self.kernel != "circulant" or self.method != "exact"):
            raise CtstoreError("--hierarchical works with --kernel circulant --method exact")
        if self.dim < 1:
            raise CtstoreError("--dim must be positive")
        if self.solver not in SOLVERS:
            raise CtstoreError(f"--solver must be one of {', '.join(SOLVERS)}, not {self.solver!r}")
        if self.solver != "auto" and not self.sparse_svd:
            raise CtstoreError("--solver applies to --kernel none or ppmi (the SVD of the sparse operator)")

    @property
    def sparse_svd(self) -> bool:
        """True when the embedding is a truncated SVD of the sparse operator itself."""
        return self.kernel in ("none", "ppmi") and self.method == "exact" and not self.hierarchical

    @property
    def operator(self) -> str:
        if self.kernel.endswith(".npy"):
            return "file"
        return self.kernel


@dataclass(frozen=True)
class K0Plan:
    n_vocab: int
    v_eff: int
    dim: int
    lags: int
    coverage: float
    dense: bool

    def describe(self) -> str:
        return (f"k0 plan: V={self.n_vocab}, V_eff={self.v_eff} (coverage {self.coverage:.2%} of corpus tokens), "
                f"d={self.dim}, lags 1..{self.lags}{', dense path' if self.dense else ''}")


def band_weights(params: K0Params, lags: int) -> tuple[list[int], list[float]]:
    """The lags of the operator and their weights (uniform, inverse-distance or an explicit list)."""
    from .operator import lag_weights

    band = list(range(params.lag_from, lags + 1))
    if params.weighting in ("uniform", "inverse-distance"):
        return band, lag_weights(band, params.weighting)
    try:
        weights = [float(x) for x in params.weighting.split(",")]
    except ValueError:
        raise CtstoreError(f"--weighting {params.weighting!r}: uniform, inverse-distance or numbers") from None
    if len(weights) != len(band):
        raise CtstoreError(f"--weighting has {len(weights)} weights for {len(band)} lags {band}")
    return band, weights


def v_eff_limit(dense_bytes_allowed: int, bytes_per_entry: int = 8) -> int:
    """Paper 113 §3.2: the largest n with an n×n dense matrix inside the allowance."""
    return int(np.sqrt(dense_bytes_allowed / bytes_per_entry))


def plan_k0(unigram: np.ndarray, store_lags: int, params: K0Params, memory: int) -> K0Plan:
    """Choose V_eff and check parameters against the store and budget (no I/O)."""
    V = unigram.size
    observed = int((unigram > 0).sum())
    dense = params.method == "fft2"
    lags = params.lags or store_lags
    if lags > store_lags or lags < 1:
        raise CtstoreError(f"--lags {lags}: the count store holds lags 1..{store_lags}")
    if not 1 <= params.lag_from <= lags:
        raise CtstoreError(f"--lag-from {params.lag_from} must be between 1 and --lags {lags}")
    band_weights(params, lags)  # validates a custom weight list
    if params.v_eff == "auto":
        v_eff = observed
        if dense:
            v_eff = min(v_eff, v_eff_limit(memory))
    else:
        v_eff = int(params.v_eff)
        if v_eff > V:
            raise CtstoreError(f"--v-eff {v_eff} exceeds the vocabulary V={V}")
        if v_eff < 2:
            raise CtstoreError("--v-eff must be at least 2")
    if params.dim > v_eff:
        raise CtstoreError(f"--dim {params.dim} exceeds V_eff={v_eff} (an n×n operator has n singular values)")
    order = np.argsort(-unigram.astype(np.int64), kind="stable")
    coverage = float(unigram[order[:v_eff]].sum() / max(1, unigram.sum()))
    return K0Plan(V, v_eff, params.dim, lags, coverage, dense)


# ---------------------------------------------------------------------------------------
# tasks


def diagonal_task(spec: OperatorSpec, block_group, inv_rank: np.ndarray, n: int) -> np.ndarray:
    g = np.zeros(n, np.float64)
    for r0, r1 in block_group:
        coo = load_block(spec, r0, r1).tocoo()
        g += diagonal_sums(inv_rank[coo.row + r0], inv_rank[coo.col], coo.data, n)
    return g


def rank_block_task(spec: OperatorSpec, block_group, inv_rank: np.ndarray, n: int) -> int:
    """Write each block transformed and in rank coordinates once, for the many SVD passes."""
    import scipy.sparse as sp

    from .operator import _save_csr

    for r0, r1 in block_group:
        block = load_block(spec, r0, r1)
        rows = inv_rank[r0:r1]
        keep = np.flatnonzero(rows >= 0)
        block = block[keep]
        block = sp.csr_matrix((block.data, inv_rank[block.indices].astype(np.int32), block.indptr),
                              shape=(keep.size, n))
        prefix = f"{spec.scratch}/rank-{r0:07d}"
        _save_csr(prefix, block)
        np.save(f"{prefix}.rows.npy", rows[keep])
    return len(block_group)


def load_rank_block(scratch: str, n: int, r0: int, r1: int):
    """(rank row indices, CSR rows × n) of a block written by :func:`rank_block_task` (memory-mapped)."""
    import scipy.sparse as sp

    prefix = f"{scratch}/rank-{r0:07d}"
    rows = np.load(f"{prefix}.rows.npy")
    load = lambda name: np.load(f"{prefix}.{name}.npy", mmap_mode="r")  # noqa: E731
    return rows, sp.csr_matrix((load("data"), load("indices"), load("indptr")), shape=(rows.size, n))


def hierarchical_task(spec: OperatorSpec, block_group, inv_rank, n: int, group_size: int, n_groups: int):
    """Group-level raw sums D_G (G×G) and within-group log1p diagonal sums (flat, by group)."""
    d_group = np.zeros(n_groups * n_groups, np.float64)
    g_within = np.zeros(n_groups * group_size, np.float64)
    raw = OperatorSpec(spec.scratch, spec.n_vocab, spec.blocks, "raw", spec.ppmi_alpha, spec.total)
    for r0, r1 in block_group:
        coo = _load_raw(raw, r0, r1)
        i, j = inv_rank[coo.row + r0], inv_rank[coo.col]
        gi, gj = i // group_size, j // group_size
        d_group += np.bincount(gi * n_groups + gj, weights=coo.data, minlength=d_group.size)
        same = gi == gj
        size = np.minimum(group_size, n - gi[same] * group_size)
        m = (j[same] - i[same]) % size
        g_within += np.bincount(gi[same] * group_size + m, weights=np.log1p(coo.data[same]),
                                minlength=g_within.size)
    return d_group, g_within


def _load_raw(spec: OperatorSpec, r0: int, r1: int):
    from .operator import _load_csr

    return _load_csr(spec.piece(r0), (r1 - r0, spec.n_vocab)).tocoo()


def svds_bytes(nnz: int, n: int, d: int) -> int:
    """Client memory of the svds solver: the gathered operator plus ARPACK's basis and U (float64)."""
    return int(nnz * SVDS_BYTES_PER_NNZ + n * (2 * d + 1) * 8 + 2 * n * d * 8)


def operator_nnz_bound(store: CountStore, lags: list[int], active: np.ndarray, symmetric: bool) -> int:
    """Non-zeros of the restricted operator, bounded above by the stored rows of the active tokens."""
    is_active = np.zeros(store.n_vocab, bool)
    is_active[active] = True
    nnz = sum(int(np.diff(store.indptr(k))[is_active].sum()) for k in lags)
    return nnz * (2 if symmetric else 1)


def choose_solver(params: K0Params, nnz: int, n: int, memory, scheduler) -> tuple[str, str]:
    """``(solver, reason)`` for a sparse-operator SVD: svds when it fits the budget next to the cluster."""
    need = svds_bytes(nnz, n, params.dim)
    if params.solver == "rsvd":
        return "rsvd", "requested (--solver rsvd)"
    if params.dim >= n - 1:
        if params.solver == "svds":
            raise CtstoreError(f"--solver svds needs --dim < V_eff - 1 (d={params.dim}, V_eff={n})")
        return "rsvd", f"svds needs d < V_eff - 1 (d={params.dim}, V_eff={n})"
    try:
        plan = plan_cluster(memory, in_process=(scheduler or "local") == "sync", client_extra=need)
        fits = plan.task_memory >= BLOCK_BYTES
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


def _runner_for(params: K0Params, n: int, memory, scheduler, svds_need: int | None = None) -> Runner:
    """A Runner whose client share holds the SVD's dense panels (or svds' operator), checked before any work."""
    if params.kernel == "circulant" and params.method == "exact":
        return Runner(memory, scheduler)
    if svds_need is not None:
        return Runner(memory, scheduler, client_extra=svds_need)
    l = RsvdParams(params.oversample, params.power_iters, params.seed).l(params.dim, n)
    panel = n * l * 4
    client = 5 * panel  # Ω/Y, Q, Z, Aᵀ·Q accumulator, gathered partial
    in_process = (scheduler or "local") == "sync"
    runner = Runner(memory, scheduler, client_extra=client if not in_process else 0)
    # a task holds the shared panel and its output panel (rows or partial Aᵀ·Q) plus one block
    need = (client if in_process else 0) + 2 * panel + BLOCK_BYTES
    if runner.plan.task_memory < need:
        raise CtstoreError(f"k0 randomized SVD (V_eff={n}, l={l}): needs {format_bytes(need)} per task and "
                           f"{format_bytes(client)} in the client; --memory {format_bytes(runner.plan.memory)} "
                           f"leaves {format_bytes(runner.plan.task_memory)} per task (lower --dim, --oversample or "
                           f"--v-eff, or raise --memory)")
    return runner


BLOCK_BYTES = (4 << 20) * 12  # one operator block: ~4M non-zeros x (data + index + row)


# ---------------------------------------------------------------------------------------
# driver


def embed_counts(counts, workspace: Workspace | None = None, *, params: K0Params | None = None,
                 memory: str | int = "4GB", scheduler: str | None = None, force: bool = False):
    """Compute K0 / SVD embeddings of a count store into an ``embeddings`` artifact."""
    ws = workspace or counts.workspace
    params = params or K0Params()
    store = CountStore.from_artifact(counts)
    budget = parse_memory(memory)
    plan = plan_k0(store.unigram, store.lags, params, budget)
    param_dict = asdict(params) | {"lags": plan.lags, "v_eff": plan.v_eff}
    solver = None
    if params.sparse_svd:
        lags, _ = band_weights(params, plan.lags)
        nnz = operator_nnz_bound(store, lags, store.rank[:plan.v_eff].astype(np.int64), params.symmetric)
        solver = choose_solver(params, nnz, plan.v_eff, memory, scheduler) + (nnz,)
        param_dict["solver"] = solver[0]  # the resolved solver: svds and rsvd results differ slightly
    else:
        del param_dict["solver"]  # other operators: fingerprints as before the option existed
    if params.kernel.endswith(".npy"):
        param_dict["kernel_sha256"] = _sha256(params.kernel)
        _check_kernel_shape(params.kernel, plan.v_eff)
    fp = fingerprint("embeddings", FORMAT_VERSION, param_dict, {"counts": counts.fingerprint})

    def build(path: str) -> dict:
        return _embed_into(ws, path, fp, counts, store, params, plan, param_dict, memory, scheduler, solver)

    artifact, _ = build_artifact(ws, "embeddings", fp, build, force=force)
    return artifact


def _sha256(path: str) -> str:
    if not os.path.isfile(path):
        raise CtstoreError(f"{path}: kernel file not found")
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _check_kernel_shape(path: str, n: int) -> None:
    try:
        k = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CtstoreError(f"{path}: not a .npy array ({exc})") from None
    if k.shape not in ((n,), (n, n)):
        raise CtstoreError(f"{path}: kernel has shape {k.shape}, expected ({n},) or ({n}, {n}) for V_eff={n}")


def _embed_into(ws, path, fp, counts, store, params: K0Params, plan: K0Plan, param_dict, memory, scheduler,
                solver=None) -> dict:
    timings: dict = {}
    n = plan.v_eff
    active = store.rank[:n].astype(np.int64)
    inv_rank = np.full(store.n_vocab, -1, np.int64)
    inv_rank[active] = np.arange(n)
    scratch = ws.scratch_dir("embeddings", fp)
    log(plan.describe())
    log(f"operator: {OPERATOR_NOTES[params.operator]}")
    if solver is not None:
        log(f"k0 solver: {solver[0]} ({solver[1]})")
        extra_attrs = {"solver": solver[0], "solver_reason": solver[1]}
    else:
        extra_attrs = {}
    svds_need = svds_bytes(solver[2], n, params.dim) if solver is not None and solver[0] == "svds" else None
    runner = _runner_for(params, n, memory, scheduler, svds_need)
    log(runner.plan.describe())
    start = time.perf_counter()
    extra: dict = {}
    first_row = None
    with TreeMemorySampler() as sampler, runner:
        with stopwatch(timings, "operator_s"):
            lags, weights = band_weights(params, plan.lags)
            spec, _stats = build_operator(
                store, runner, os.path.join(scratch, "op"), lags=lags, weights=weights,
                symmetric=params.symmetric, active=active, transform=params.transform, ppmi_alpha=params.ppmi_alpha)
        groups = round_robin(spec.blocks)  # fixed grouping: the same sums on every scheduler
        with stopwatch(timings, "embed_s"):
            if params.hierarchical:
                rows, spectrum, extra = _hierarchical(runner, spec, groups, inv_rank, n, params.dim)
            elif params.kernel == "circulant" and params.method == "exact":
                g = runner.map_reduce(diagonal_task, [(spec, grp, inv_rank, n) for grp in groups],
                                      lambda acc, x: x if acc is None else acc + x, desc="k0 diagonals")
                rows, spectrum, modes, first_row = circulant_embedding(g, params.dim)
                extra = {"paired_modes": sum(1 for _, kind in modes if kind != "single") // 2,
                         "first_row_norm": float(np.linalg.norm(first_row))}
            elif params.method == "fft2":
                rows, spectrum = _fft2_embedding(runner, spec, groups, inv_rank, n, params, scratch)
            else:
                runner.map(rank_block_task, [(spec, grp, inv_rank, n) for grp in groups], desc="k0 rank blocks")
                load = partial(load_rank_block, spec.scratch, n)
                if solver[0] == "svds":
                    u, s = svds_blocks(load, list(spec.blocks), n, params.dim, params.seed)
                else:
                    u, s, _ = randomized_svd_blocks(runner, load, list(spec.blocks), n, n, params.dim,
                                                    RsvdParams(params.oversample, params.power_iters, params.seed),
                                                    n_tasks=len(groups))
                rows = (u * np.sqrt(s)).astype(np.float32)  # rank order
                spectrum = s
    timings["total_s"] = round(time.perf_counter() - start, 3)
    E = _full_embedding(rows, active, store.n_vocab, params.seed)
    _write_embeddings(ws, path, E, np.asarray(spectrum[: params.dim], np.float32), active, params, plan,
                      counts, timings, first_row, extra_attrs)
    shutil.rmtree(scratch, ignore_errors=True)
    log(f"k0: E {E.shape} in {timings['total_s']:.1f} s, peak memory {format_bytes(sampler.peak)}")
    return {
        "format_version": FORMAT_VERSION,
        "params": param_dict,
        "inputs": {"counts": counts.fingerprint},
        "tokenizer": counts.manifest.get("tokenizer"),
        "n_vocab": store.n_vocab,
        "dim": params.dim,
        "v_eff": n,
        "coverage": plan.coverage,
        "operator": params.operator,
        "operator_note": OPERATOR_NOTES[params.operator],
        "spectrum_head": [float(x) for x in np.asarray(spectrum[:8])],
        "timings": timings,
        "peak_memory_bytes": int(sampler.peak),
        **extra_attrs,
        **extra,
    }


def _hierarchical(runner, spec, groups, inv_rank, n, d):
    from .circulant import circulant_embedding as embed

    n_groups = int(np.ceil(np.sqrt(n)))
    group_size = int(np.ceil(n / n_groups))
    n_groups = int(np.ceil(n / group_size))
    d_group_dim = d - d // 2
    d_within = d // 2
    d_g, g_w = runner.map_reduce(
        hierarchical_task, [(spec, grp, inv_rank, n, group_size, n_groups) for grp in groups],
        lambda acc, x: x if acc is None else (acc[0] + x[0], acc[1] + x[1]), desc="k0 hierarchical")
    x_group = np.log1p(d_g.reshape(n_groups, n_groups))
    ii, jj = np.nonzero(x_group)
    g_top = diagonal_sums(ii, jj, x_group[ii, jj], n_groups)
    e_group, s_group, _, _ = embed(g_top, min(d_group_dim, n_groups))
    rows = np.zeros((n, d), np.float32)
    rank = np.arange(n)
    rows[:, : e_group.shape[1]] = e_group[rank // group_size]
    spectrum_within = np.zeros(d_within)
    for gi in range(n_groups):
        lo, hi = gi * group_size, min(n, (gi + 1) * group_size)
        size = hi - lo
        g = g_w[gi * group_size: gi * group_size + size]
        if not g.any() or d_within == 0:
            continue
        e_w, s_w, _, _ = embed(g, min(d_within, size))
        rows[lo:hi, d_group_dim: d_group_dim + e_w.shape[1]] = e_w
        spectrum_within[: s_w.size] = np.maximum(spectrum_within[: s_w.size], s_w)
    spectrum = np.concatenate([np.pad(s_group, (0, d_group_dim - s_group.size)), spectrum_within])
    return rows, spectrum, {"groups": n_groups, "group_size": group_size}


def _fft2_embedding(runner, spec, groups, inv_rank, n, params: K0Params, scratch):
    """Literal path: X in rank order → out-of-core FFT convolution → randomized SVD of W."""
    import scipy.sparse as sp

    from .fft2 import fft2_convolve, plan_fft2, read_w_rows
    from .operator import _save_csr

    parts = runner.map(_rank_coo_task, [(spec, grp, inv_rank) for grp in groups], desc="fft2 gather X")
    rows = np.concatenate([p[0] for p in parts])
    cols = np.concatenate([p[1] for p in parts])
    vals = np.concatenate([p[2] for p in parts])
    x = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    x_prefix = os.path.join(scratch, "x")
    _save_csr(x_prefix, x)
    if params.kernel == "circulant":
        k_path = os.path.join(scratch, "k0.npy")
        np.save(k_path, diagonal_sums(rows, cols, vals, n) / n)
        k_source = ("circulant", k_path)
    else:
        k = np.load(params.kernel, mmap_mode="r")
        k_source = ("circulant", params.kernel) if k.ndim == 1 else ("dense", params.kernel)
    plan = plan_fft2(n, runner.plan.task_memory, shutil.disk_usage(scratch).free)
    log(plan.describe())
    w_url = fft2_convolve(runner, ("csr", x_prefix), k_source, n, scratch, plan)
    blocks = [(i, min(n, i + plan.row_chunk)) for i in range(0, n, plan.row_chunk)]
    u, s, _ = randomized_svd_blocks(runner, partial(read_w_rows, w_url), blocks, n, n, params.dim,
                                    RsvdParams(params.oversample, params.power_iters, params.seed))
    return (u * np.sqrt(s)).astype(np.float32), s


def svds_blocks(load, blocks, n: int, d: int, seed: int):
    """Top-d ``(U (n × d) float32, S (d,))`` of the n × n operator given by rank blocks, by ARPACK
    (``scipy.sparse.linalg.svds``) on the whole operator gathered in float64; deterministic start
    vector from ``seed``, S descending, signs as :func:`ctstore.rsvd.normalize_signs`."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    from .rsvd import normalize_signs

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
    u, _ = normalize_signs(u[:, order])
    return u.astype(np.float32), s[order].astype(np.float32)


def _rank_coo_task(spec, block_group, inv_rank):
    rows, cols, vals = [], [], []
    for r0, r1 in block_group:
        coo = load_block(spec, r0, r1).tocoo()
        rows.append(inv_rank[coo.row + r0])
        cols.append(inv_rank[coo.col])
        vals.append(coo.data)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def _full_embedding(rows: np.ndarray, active: np.ndarray, V: int, seed: int) -> np.ndarray:
    rms = float(np.sqrt(np.mean(rows.astype(np.float64) ** 2))) or 1.0
    rng = np.random.default_rng(seed + 1_000_003)
    E = (rng.standard_normal((V, rows.shape[1]), dtype=np.float32) * np.float32(0.01 * rms))
    E[active] = rows
    return E


def _write_embeddings(ws, path, E, spectrum, active, params, plan, counts, timings, first_row=None,
                      extra_attrs=None) -> None:
    import zarr

    url = f"{path}/embeddings.zarr" if ws.is_local else ws.fs.unstrip_protocol(f"{path}/embeddings.zarr")
    so = None if ws.is_local else (ws.storage_options or None)
    group = zarr.open_group(url, mode="w", storage_options=so)
    from .formats.counts import COMPRESSORS

    group.create_array("E", data=E, chunks=(min(E.shape[0], 16384), E.shape[1]), compressors=COMPRESSORS)
    group.create_array("spectrum", data=spectrum, compressors=COMPRESSORS)
    group.create_array("active", data=active.astype(np.uint32), compressors=COMPRESSORS)
    if first_row is not None:  # r = g ⊛ k0: W[i, j] = r[(j - i) mod V_eff] (exact circulant path)
        group.create_array("first_row", data=first_row.astype(np.float64), compressors=COMPRESSORS)
    group.attrs.update({
        "operator": params.operator, "operator_note": OPERATOR_NOTES[params.operator], "kernel": params.kernel,
        "method": params.method, "transform": params.transform, "V_eff": plan.v_eff, "coverage": plan.coverage,
        "lags": plan.lags, "weighting": params.weighting, "symmetric": params.symmetric,
        "hierarchical": params.hierarchical, "timings": timings, "counts": counts.fingerprint,
        "format_version": FORMAT_VERSION, **(extra_attrs or {}),
    })


def load_embeddings(artifact):
    """``(E, spectrum, active, attrs)`` of an embeddings artifact."""
    import zarr

    if artifact.kind != "embeddings":
        raise CtstoreError(f"{artifact}: is a {artifact.kind} artifact, expected embeddings")
    from .integrity import ChunkIndex

    so = None if artifact.workspace.is_local else (artifact.workspace.storage_options or None)
    url = artifact.child("embeddings.zarr")
    chunks = ChunkIndex.from_manifest(url, artifact.manifest, so)
    for name in ("E", "spectrum", "active"):
        chunks.require(name)  # an absent chunk would read as zeros
    try:
        group = zarr.open_group(url, mode="r", storage_options=so)
        return group["E"][:], group["spectrum"][:], group["active"][:], dict(group.attrs)
    except (ValueError, OSError, RuntimeError, KeyError) as exc:  # e.g. a chunk failing its crc32c
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CtstoreError(f"{url}: cannot be read ({reason}); run ctstore verify") from None


# ---------------------------------------------------------------------------------------
# CLI


def add_parser(sub, common) -> None:
    s = sub.add_parser("k0", help="count store -> embeddings (K0 circulant, SVD, PPMI)")
    s.add_argument("counts", help="counts artifact fingerprint (or unique prefix)")
    s.add_argument("--dim", "-d", type=int, default=128, help="embedding dimension d (default 128)")
    s.add_argument("--lags", type=int, default=None, help="use lags 1..L (default: all in the store)")
    s.add_argument("--lag-from", type=int, default=1, help="first lag of the band (default 1)")
    s.add_argument("--weighting", default="uniform",
                   help="uniform, inverse-distance, or one comma-separated weight per lag")
    s.add_argument("--symmetric", action="store_true", help="add the transpose (symmetric window)")
    s.add_argument("--v-eff", default="auto", help="active vocabulary: N or auto (from the memory budget)")
    s.add_argument("--transform", default="log1p", choices=["log1p", "ppmi"])
    s.add_argument("--ppmi-alpha", type=float, default=1.0, help="context smoothing (0.75 is common)")
    s.add_argument("--kernel", default="circulant", help="circulant (K0), none (SVD of X), ppmi, or a .npy kernel")
    s.add_argument("--method", default="exact", choices=["exact", "fft2"])
    s.add_argument("--hierarchical", action="store_true", help="two-level K0, memory O(V) (Paper 113 §4.2)")
    s.add_argument("--oversample", type=int, default=None, help="randomized SVD oversampling (default max(64, d))")
    s.add_argument("--power-iters", type=int, default=5, help="randomized SVD power iterations (default 5)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--solver", default="auto", choices=list(SOLVERS),
                   help="SVD of --kernel none/ppmi: svds (Lanczos, operator in memory, if it fits --memory), rsvd "
                        "(randomized, out of core) or auto (rsvd, measured faster; default)")
    common(s)


def run_cli(args, ws):
    counts = ws.get(args.counts, kind="counts")
    v_eff = args.v_eff if args.v_eff == "auto" else int(args.v_eff)
    params = K0Params(dim=args.dim, lags=args.lags, lag_from=args.lag_from, weighting=args.weighting, symmetric=args.symmetric, v_eff=v_eff,
                      transform=args.transform, ppmi_alpha=args.ppmi_alpha, kernel=args.kernel, method=args.method,
                      hierarchical=args.hierarchical, oversample=args.oversample, power_iters=args.power_iters,
                      seed=args.seed, solver=args.solver)
    return embed_counts(counts, ws, params=params, memory=args.memory, scheduler=args.scheduler, force=args.force)
