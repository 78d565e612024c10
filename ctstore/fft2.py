"""The literal K0 formula out of core: ``W = IFFT2(FFT2(X) ⊙ FFT2(K))`` for any kernel K.

X (n × n, rank order) lives as a sparse CSR in scratch; every dense
intermediate lives in Zarr, written in chunks that exactly one task owns:

1. row pass: dense rows of X (and of K) → ``rfft`` along columns → complex64
   ``(n, n/2+1)`` arrays in square ``(rc, cc)`` chunks;
2. column pass: a band of ``cc`` columns of both → ``fft`` along rows →
   multiply → ``ifft`` along rows → written back as a column band;
3. inverse row pass: ``irfft`` along columns → W rows (float32, ``(rc, n)`` chunks).

Memory per task is one row band or one column band (sized by the planner from
the per-task budget); disk is three complex intermediates plus W,
``3·n·(n/2+1)·8 + n²·4`` bytes, checked against free space before starting.
``scipy.fft`` is used (about 10× faster per transform than ``numpy.fft`` here).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.sparse as sp

from ._util import CtstoreError, format_bytes

__all__ = ["Fft2Plan", "plan_fft2", "fft2_convolve"]


@dataclass(frozen=True)
class Fft2Plan:
    n: int
    row_chunk: int
    col_chunk: int
    disk_bytes: int

    def describe(self) -> str:
        return (f"fft2 plan: n={self.n}, row bands of {self.row_chunk}, column bands of {self.col_chunk}, "
                f"intermediates {format_bytes(self.disk_bytes)} on disk")


def plan_fft2(n: int, task_memory: int, free_disk: int) -> Fft2Plan:
    half = n // 2 + 1
    # a band holds the input, its transform and a copy: ~4 complex64 values per cell
    row_chunk = int(max(1, min(n, task_memory // (half * 8 * 4 + n * 4 * 2))))
    col_chunk = int(max(1, min(half, task_memory // (n * 8 * 6))))
    disk = 3 * n * half * 8 + n * n * 4
    if disk > free_disk:
        raise CtstoreError(f"k0 fft2: needs {format_bytes(disk)} of disk for intermediates at n={n}, "
                           f"only {format_bytes(free_disk)} free (lower --v-eff or use --method exact)")
    return Fft2Plan(n, row_chunk, col_chunk, disk)


def _dense_rows(source, i0: int, i1: int, n: int) -> np.ndarray:
    kind, arg = source
    if kind == "csr":
        m = sp.csr_matrix((np.load(f"{arg}.data.npy", mmap_mode="r"), np.load(f"{arg}.indices.npy", mmap_mode="r"),
                           np.load(f"{arg}.indptr.npy")), shape=(n, n))
        return m[i0:i1].toarray().astype(np.float64)
    if kind == "circulant":  # first row k
        k = np.load(arg)
        idx = (np.arange(n)[None, :] - np.arange(i0, i1)[:, None]) % n
        return k[idx]
    if kind == "dense":
        return np.asarray(np.load(arg, mmap_mode="r")[i0:i1], dtype=np.float64)
    raise ValueError(kind)


def row_fft_task(source, i0: int, i1: int, n: int, out_url: str) -> None:
    import zarr

    arr = zarr.open_array(out_url, mode="r+")
    arr[i0:i1] = scipy.fft.rfft(_dense_rows(source, i0, i1, n), axis=1).astype(np.complex64)


def column_task(x_url: str, k_url: str, out_url: str, c0: int, c1: int) -> None:
    import zarr

    fx = scipy.fft.fft(zarr.open_array(x_url, mode="r")[:, c0:c1].astype(np.complex128), axis=0)
    fk = scipy.fft.fft(zarr.open_array(k_url, mode="r")[:, c0:c1].astype(np.complex128), axis=0)
    fx *= fk
    del fk
    zarr.open_array(out_url, mode="r+")[:, c0:c1] = scipy.fft.ifft(fx, axis=0).astype(np.complex64)


def inverse_row_task(g_url: str, w_url: str, i0: int, i1: int, n: int) -> None:
    import zarr

    rows = zarr.open_array(g_url, mode="r")[i0:i1].astype(np.complex128)
    zarr.open_array(w_url, mode="r+")[i0:i1] = scipy.fft.irfft(rows, n=n, axis=1).astype(np.float32)


def read_w_rows(w_url: str, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
    import zarr

    return np.arange(r0, r1), zarr.open_array(w_url, mode="r")[r0:r1]


def fft2_convolve(runner, x_source, k_source, n: int, scratch: str, plan: Fft2Plan) -> str:
    """Compute W into ``scratch/W.zarr`` and return its URL."""
    import zarr

    half = n // 2 + 1
    urls = {name: os.path.join(scratch, f"{name}.zarr") for name in ("FX", "FK", "G", "W")}
    for name in ("FX", "FK", "G"):
        zarr.create_array(urls[name], shape=(n, half), dtype=np.complex64,
                          chunks=(plan.row_chunk, plan.col_chunk), overwrite=True)
    zarr.create_array(urls["W"], shape=(n, n), dtype=np.float32, chunks=(plan.row_chunk, n), overwrite=True)
    rows = [(i, min(n, i + plan.row_chunk)) for i in range(0, n, plan.row_chunk)]
    cols = [(c, min(half, c + plan.col_chunk)) for c in range(0, half, plan.col_chunk)]
    jobs = [(src, i0, i1, n, urls[name]) for name, src in (("FX", x_source), ("FK", k_source)) for i0, i1 in rows]
    runner.map(row_fft_task, jobs, desc="fft2 rows")
    runner.map(column_task, [(urls["FX"], urls["FK"], urls["G"], c0, c1) for c0, c1 in cols], desc="fft2 columns")
    runner.map(inverse_row_task, [(urls["G"], urls["W"], i0, i1, n) for i0, i1 in rows], desc="fft2 inverse")
    return urls["W"]
