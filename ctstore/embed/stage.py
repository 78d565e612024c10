"""Stage ``k0``: count store → ``embeddings`` artifact (docs/design.md §4; Papers 51, 113).

This module runs the stage: it plans (:mod:`ctstore.embed.plan`: V_eff, lags
and the memory plan of the chosen method, all checked before anything is
written), dispatches to one method module and writes the artifact; and it
holds the ``k0`` command line. Operators (``kernel`` × ``method``):

* ``circulant`` + ``exact`` (default): the seeds' K0 through the circulant
  identity (:mod:`ctstore.embed.circulant`), O(nnz + V log V), no dense matrix;
* ``circulant`` or a kernel file + ``fft2``: the literal formula out of core
  (:mod:`ctstore.embed.fft2`), then a randomized SVD of the dense W. For
  checking the identity and for general kernels (``.npy``: a length-n first row
  of a circulant, or an n × n array);
* ``none``: truncated SVD of X itself (log1p counts); ``ppmi``: of PPMI
  (:mod:`ctstore.embed.sparse`, solvers ``svds`` and ``rsvd``). These are the
  *semantic* alternatives; the circulant operators produce Fourier features of
  frequency rank, and the artifact says which is which. The resolved solver is
  part of the fingerprint (the two give slightly different embeddings);
* ``--hierarchical``: two-level K0, memory O(V) (:mod:`ctstore.embed.hierarchical`).

Every method reads the same weighted operator blocks (:mod:`ctstore.embed.blocks`),
sized by the memory plan (:mod:`ctstore.embed.budget`).

Embeddings: ``E = U_d · sqrt(S_d)`` for active tokens (row = token id);
inactive tokens get seeded N(0, σ²) rows with σ = 1% of the active rows' RMS.
The artifact's format: :mod:`ctstore.formats.embeddings`.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, replace

import numpy as np

from ..cluster import Runner, round_robin
from ..errors import CtstoreError
from ..formats.counts import CountStore
from ..formats.embeddings import FORMAT_VERSION, write_embeddings
from ..formats.scratch import remove as remove_scratch, tree_bytes
from ..location import Location
from ..log import log, stopwatch
from ..memory import TreeMemorySampler
from ..units import format_bytes, parse_memory
from ..stage import Input, Stage
from ..workspace import Workspace, build_artifact
from . import circulant, fft2, hierarchical, sparse
from .blocks import build_operator, row_entries
from .budget import MemoryPlan
from .plan import K0Params, K0Plan, band_weights, plan_k0, plan_memory

__all__ = ["embed_counts", "OPERATOR_NOTES", "STAGE"]

OPERATOR_NOTES = {
    "circulant": "circulant K0 (Papers 51/113): real Fourier modes of frequency rank, not learned semantics",
    "none": "randomized SVD of the co-occurrence matrix X (semantic)",
    "ppmi": "randomized SVD of PPMI (semantic)",
    "file": "user kernel through the literal 2-D FFT formula",
}


# ---------------------------------------------------------------------------------------
# driver


def embed_counts(counts, workspace: Workspace | None = None, *, params: K0Params | None = None,
                 memory: str | int = "4GB", scheduler: str | None = None, force: bool = False):
    """Compute K0 / SVD embeddings of a count store into an ``embeddings`` artifact."""
    ws = workspace or counts.workspace
    params = params or K0Params()
    job = _prepare(counts, params, memory, scheduler)
    fp = STAGE.fingerprint(job["resolved"], job["inputs"])

    def build(path: str) -> dict:
        return _embed_into(ws, path, fp, counts, job["store"], params, job["plan"], job["param_dict"],
                           job["memory_plan"], scheduler, job["solver"], job["row_nnz"], job["nnz"])

    artifact, _ = build_artifact(ws, "embeddings", fp, build, force=force)
    return artifact


def _prepare(counts, params: K0Params, memory, scheduler) -> dict:
    """Everything decided before any work: V_eff and lags, the solver, the memory plan, the resolved params.

    The fingerprint covers the resolved parameters (lags and V_eff as chosen, the
    solver as resolved: svds and rsvd results differ slightly) and, for a kernel
    file, its content hash.
    """
    store = CountStore.from_artifact(counts)
    budget = parse_memory(memory)
    plan = plan_k0(store.unigram, store.lags, params, budget)
    param_dict = asdict(params) | {"lags": plan.lags, "v_eff": plan.v_eff}
    solver = None
    lags, _ = band_weights(params, plan.lags)
    row_nnz = row_entries(store, lags)
    nnz = 0
    if params.sparse_svd or params.method == "fft2":
        nnz = sparse.operator_nnz_bound(store, lags, store.rank[:plan.v_eff].astype(np.int64), params.symmetric)
    if params.sparse_svd:
        solver = sparse.choose_solver(params, nnz, plan.v_eff, memory, scheduler)
        param_dict["solver"] = solver[0]
    else:
        del param_dict["solver"]  # meaningless for the other operators
    inputs = {"counts": counts.fingerprint}
    if params.kernel.endswith(".npy"):
        inputs["kernel_sha256"] = param_dict["kernel_sha256"] = _sha256(params.kernel)
        _check_kernel_shape(params.kernel, plan.v_eff)
    memory_plan = plan_memory(params, plan.v_eff, store.n_vocab, memory, scheduler, solver=solver and solver[0],
                              nnz=nnz, max_row_entries=int(row_nnz.max(initial=1)))
    resolved = replace(params, lags=plan.lags, v_eff=plan.v_eff, solver=solver[0] if solver else "auto")
    return {"store": store, "plan": plan, "param_dict": param_dict, "solver": solver, "row_nnz": row_nnz, "nnz": nnz,
            "memory_plan": memory_plan, "resolved": resolved, "inputs": inputs}


def plan_lines(ws, inputs, params: K0Params, opts) -> list[str]:
    """``ctstore k0 --plan``: V_eff, lags, solver and the memory plan per task and client; nothing is computed."""
    job = _prepare(inputs["counts"], params, opts["memory"], opts["scheduler"])
    lines = [job["plan"].describe(), f"operator: {OPERATOR_NOTES[params.operator]}"]
    if job["solver"] is not None:
        lines.append(f"k0 solver: {job['solver'][0]} ({job['solver'][1]})")
    return lines + [job["memory_plan"].describe()]


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
    if not np.issubdtype(k.dtype, np.number) or np.iscomplexobj(k):
        raise CtstoreError(f"{path}: kernel has dtype {k.dtype}, expected real numbers")
    rows = max(1, (16 << 20) // max(1, k[0].size))  # checked in blocks: a dense kernel may not fit in memory
    for start in range(0, k.shape[0], rows):
        block = np.asarray(k[start:start + rows])
        if not np.isfinite(block).all():
            bad = start + int(np.flatnonzero(~np.isfinite(block).reshape(len(block), -1).any(axis=1))[0])
            raise CtstoreError(f"{path}: kernel has a NaN or infinite value (row {bad}); a kernel must be finite")


def _embed_into(ws, path, fp, counts, store, params: K0Params, plan: K0Plan, param_dict, memory_plan: MemoryPlan,
                scheduler, solver, row_nnz, nnz) -> dict:
    timings: dict = {}
    n = plan.v_eff
    active = store.rank[:n].astype(np.int64)
    inv_rank = np.full(store.n_vocab, -1, np.int64)
    inv_rank[active] = np.arange(n)
    scratch = ws.scratch_location("embeddings", fp)  # every task reaches it (formats/scratch.py)
    log(plan.describe())
    log(f"operator: {OPERATOR_NOTES[params.operator]}")
    extra_attrs = {}
    if solver is not None:
        log(f"k0 solver: {solver[0]} ({solver[1]})")
        extra_attrs = {"solver": solver[0], "solver_reason": solver[1]}
    log(memory_plan.describe())
    runner = Runner(memory_plan.cluster.memory, scheduler, client_extra=memory_plan.client_bytes)
    start = time.perf_counter()
    with TreeMemorySampler() as sampler, runner:
        with stopwatch(timings, "operator_s"):
            lags, weights = band_weights(params, plan.lags)
            spec = build_operator(
                store, runner, scratch.child("op"), lags=lags, weights=weights,
                symmetric=params.symmetric, active=active, transform=params.transform, ppmi_alpha=params.ppmi_alpha,
                block_entries=memory_plan.block_entries, row_nnz=row_nnz)
        groups = round_robin(spec.blocks)  # fixed grouping: the same sums on every scheduler
        with stopwatch(timings, "embed_s"):
            if params.hierarchical:
                rows, spectrum, extra, first_row = hierarchical.embed(runner, spec, groups, inv_rank, n, params.dim)
            elif params.method == "fft2":
                rows, spectrum, extra, first_row = fft2.embed(runner, spec, groups, inv_rank, n, params, scratch,
                                                              memory_plan, nnz)
            elif params.kernel == "circulant":
                rows, spectrum, extra, first_row = circulant.embed(runner, spec, groups, inv_rank, n, params.dim)
            else:
                rows, spectrum, extra, first_row = sparse.embed(runner, spec, groups, inv_rank, n, params, solver[0])
    timings["total_s"] = round(time.perf_counter() - start, 3)
    E = _full_embedding(rows, active, store.n_vocab, params.seed)
    url = f"{path}/embeddings.zarr" if ws.is_local else ws.fs.unstrip_protocol(f"{path}/embeddings.zarr")
    attrs = {
        "operator": params.operator, "operator_note": OPERATOR_NOTES[params.operator], "kernel": params.kernel,
        "method": params.method, "transform": params.transform, "V_eff": plan.v_eff, "coverage": plan.coverage,
        "lags": plan.lags, "weighting": params.weighting, "symmetric": params.symmetric,
        "hierarchical": params.hierarchical, "timings": timings, "counts": counts.fingerprint, **extra_attrs,
    }
    write_embeddings(Location(url, {} if ws.is_local else dict(ws.storage_options or {})), E,
                     np.asarray(spectrum[: params.dim], np.float32), active, attrs, first_row)
    scratch_bytes = tree_bytes(scratch)  # operator, rank blocks, bands: what went through scratch
    remove_scratch(scratch)
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
        "scratch_bytes": int(scratch_bytes),
        **extra_attrs,
        **extra,
    }


def _full_embedding(rows: np.ndarray, active: np.ndarray, V: int, seed: int) -> np.ndarray:
    rms = float(np.sqrt(np.mean(rows.astype(np.float64) ** 2))) or 1.0
    rng = np.random.default_rng(seed + 1_000_003)
    E = (rng.standard_normal((V, rows.shape[1]), dtype=np.float32) * np.float32(0.01 * rms))
    E[active] = rows
    return E



# ---------------------------------------------------------------------------------------
# CLI


STAGE = Stage(
    name="k0", kind="embeddings", params=K0Params, code_version=1, format_version=FORMAT_VERSION,
    help="count store -> embeddings (K0 circulant, SVD, PPMI)",
    inputs=(Input("counts", "counts", "counts artifact fingerprint (or unique prefix)"),),
    run=lambda ws, inputs, params, opts: embed_counts(inputs["counts"], ws, params=params, memory=opts["memory"],
                                                      scheduler=opts["scheduler"], force=opts["force"]),
    plan=plan_lines,
)
