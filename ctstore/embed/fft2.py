"""The literal K0 formula out of core: ``W = IFFT2(FFT2(X) ⊙ FFT2(K))`` for any kernel K.

X (n × n, rank order) never meets the client: the operator's token-id blocks
are spilled by the tasks that read them into rank-row bands (a shuffle,
:func:`band_spill_task`), and each row task assembles its band from those
pieces. Every dense intermediate lives in uncompressed Zarr, written in chunks
that exactly one task owns (as whole chunk files, :func:`write_chunks`:
Zarr's write path cost 6× a plain file write):

1. row pass: dense rows of X (and of a dense K) → ``rfft`` along columns →
   complex64 ``(n, n/2+1)`` arrays in ``(rc, cc)`` chunks;
2. column pass: a band of ``cc`` columns of both → ``fft`` along rows →
   multiply → ``ifft`` along rows → written back over FX's column band;
3. inverse row pass: ``irfft`` along columns → W rows (float32, ``(rc, n)`` chunks).

A circulant K (given by its first row k) is not stored: row i of circ(k) is k
shifted by i, so its row spectrum is ``rfft(k)[q] · exp(−2πi·q·i/n)`` (shift
theorem, exact up to rounding); the column task forms its band of that from k
and then transforms along rows like any other kernel.

All transforms are single precision (float32 in, complex64 out; max error
3e-7 of max |W| at n = 2048 against numpy in float64; the tests bound it at
1e-5, and 1e-4 at n = 8192). Memory per task is one row band or one
column band (sized by the planner from the per-task budget); disk is at most
two complex intermediates plus W, ``2·n·(n/2+1)·8 + n²·4`` bytes, plus the
spilled X, checked against free space before starting. The embedding is then
the randomized SVD of W (:mod:`ctstore.embed.rsvd`) over W's row bands. ``scipy.fft`` is used (about 10× faster
per transform than ``numpy.fft`` here).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import numpy as np
import scipy.fft
import scipy.sparse as sp

from ..errors import CtstoreError
from ..formats.csr import load_csr
from ..formats.scratch import free_bytes, load_array, npy_layout, read_slice, save_array
from ..location import Location
from ..log import log
from ..units import format_bytes
from .blocks import load_block
from .budget import MemoryPlan, fit
from .circulant import diagonals
from .products import block_products
from .rsvd import RsvdParams, randomized_svd
from .sparse import rsvd_bytes

__all__ = ["Fft2Plan", "plan_fft2", "fft2_convolve", "plan", "embed"]


@dataclass(frozen=True)
class Fft2Plan:
    n: int
    row_chunk: int
    col_chunk: int
    disk_bytes: int

    def describe(self) -> str:
        return (f"fft2 plan: n={self.n}, row bands of {self.row_chunk}, column bands of {self.col_chunk}, "
                f"intermediates {format_bytes(self.disk_bytes)} on disk")


ROW_BYTES_PER_ENTRY = 40
COLUMN_BYTES_PER_ENTRY = 32


def plan_fft2(n: int, task_memory: int, free_disk: int, spill_bytes: int = 0) -> Fft2Plan:
    """Band sizes from the memory a task has, and the disk check (``spill_bytes``: X spilled in bands)."""
    half = n // 2 + 1
    # a row band holds float32 rows and their complex64 spectrum, each with a working copy (16 bytes per
    # entry), and while it is assembled the band's sparse entries, which may fill it (int32 row and column,
    # float32 value and the CSR built from them: 24); a column band holds the FX and FK bands (complex64)
    # and one transform temporary
    row_chunk = int(max(1, min(n, task_memory // (ROW_BYTES_PER_ENTRY * n))))
    col_chunk = int(max(1, min(half, task_memory // (n * COLUMN_BYTES_PER_ENTRY))))
    disk = 2 * n * half * 8 + n * n * 4 + spill_bytes
    if disk > free_disk:
        raise CtstoreError(f"k0 fft2: needs {format_bytes(disk)} of disk for intermediates at n={n}, "
                           f"only {format_bytes(free_disk)} free (lower --v-eff or use --method exact)")
    return Fft2Plan(n, row_chunk, col_chunk, disk)


def _as_location(where: Location | str) -> Location:
    return where if isinstance(where, Location) else Location.of(where)


def _dense_rows(source, i0: int, i1: int, n: int) -> np.ndarray:
    """Rows [i0, i1) of a source as float32 (a view where the source allows it).

    Sources name Locations (a string is a local path): ``("csr", prefix)``,
    ``("bands", (scratch, {band start: block starts}))``, ``("circulant", k.npy)``,
    ``("dense", K.npy)`` (rows read by range).
    """
    kind, arg = source
    if kind == "csr":  # a whole X in one CSR file (tests, benchmarks)
        return load_csr(arg, (n, n), mmap=True)[i0:i1].toarray().astype(np.float32, copy=False)
    if kind == "bands":  # pieces spilled by band_spill_task: (scratch, first rows of the operator blocks)
        return _band_rows(arg[0], arg[1], i0, i1, n)
    if kind == "circulant":  # first row k: row i is k shifted right by i, a window of k twice over
        k = load_array(_as_location(arg)).astype(np.float32)
        windows = np.lib.stride_tricks.sliding_window_view(np.concatenate([k, k]), n)
        return windows[n - i1 + 1: n - i0 + 1][::-1]  # row i is window n − i
    if kind == "dense":
        loc = _as_location(arg)
        return np.asarray(read_slice(loc, npy_layout(loc)[0], i0, i1), dtype=np.float32)
    raise ValueError(kind)


def write_chunks(loc: Location, block: np.ndarray, i0: int, c0: int, chunks: tuple[int, int]) -> None:
    """Write ``block`` at ``[i0:, c0:]`` of an uncompressed Zarr v3 array (created by :func:`fft2_convolve`)
    as whole chunk files, bypassing Zarr's write path.

    The block must cover whole chunks (it starts on a chunk boundary and ends on
    one or at the array's edge); an edge chunk is zero-padded to the chunk shape,
    as Zarr stores it. An uncompressed v3 chunk is its values in C order,
    little-endian, under the key ``c/<row chunk>/<column chunk>``, so this writes
    exactly what ``arr[i0:, c0:] = block`` would. Zarr's own write path copies each
    chunk several times (about 1.5 ns per byte, 6× a plain file write: half the
    CPU of fft2's column pass at n = 16,384); reading stays with Zarr.
    """
    rc, cc = chunks
    local = loc.is_local
    for a in range(0, block.shape[0], rc):
        for b in range(0, block.shape[1], cc):
            piece = block[a:a + rc, b:b + cc]
            if piece.shape != (rc, cc):
                padded = np.zeros((rc, cc), block.dtype)
                padded[:piece.shape[0], :piece.shape[1]] = piece
                piece = padded
            data = np.ascontiguousarray(piece, dtype=piece.dtype.newbyteorder("<")).data
            key = ("c", str((i0 + a) // rc), str((c0 + b) // cc))
            if local:
                folder = os.path.join(loc.url, *key[:-1])
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, key[-1]), "wb") as f:
                    f.write(data)
            else:
                with loc.child(*key).open("wb") as f:
                    f.write(data)


def row_fft_task(source, i0: int, i1: int, n: int, out: Location, chunks: tuple[int, int] | None = None) -> None:
    spectrum = scipy.fft.rfft(_dense_rows(source, i0, i1, n), axis=1)  # float32 in, complex64 out
    if chunks is None:
        out.open_array("r+")[i0:i1] = spectrum
    else:
        write_chunks(out, spectrum, i0, 0, chunks)


def _kernel_row_spectra(k_source, c0: int, c1: int, n: int) -> np.ndarray:
    """Columns [c0, c1) of the row-wise rfft of K: read from the row pass, or for a circulant K built
    from its first row (row i is k shifted by i: ``rfft(k)[q] · exp(−2πi·q·i/n)``)."""
    kind, arg = k_source
    if kind == "zarr":
        return arg.open_array("r")[:, c0:c1]
    khat = scipy.fft.rfft(load_array(_as_location(arg)).astype(np.float64))[c0:c1]
    # exp(−2πi·q·i/n) with i = 128·h + l factors into an (h, q) and an (l, q) table: one outer product
    # per column, every phase from an exact integer index q·i mod n. Built row-major (i, q), the layout of
    # FX's band, so that the transform along rows and the product with FX run on contiguous memory (a
    # transposed FK made ``fx *= fk`` 13× slower than the same product between C-order arrays)
    twiddle = np.exp(-2j * np.pi * np.arange(n) / n).astype(np.complex64)
    q = np.arange(c0, c1, dtype=np.int64)[None, :]
    block = 128
    n_hi = -(-n // block)
    hi = twiddle[((np.arange(n_hi, dtype=np.int64) * block)[:, None] * q) % n] * khat.astype(np.complex64)[None, :]
    lo = twiddle[(np.arange(block, dtype=np.int64)[:, None] * q) % n]
    out = np.empty((n_hi, block, c1 - c0), np.complex64)
    np.multiply(hi[:, None, :], lo[None, :, :], out=out)
    return out.reshape(n_hi * block, c1 - c0)[:n]


def column_task(fx_location: Location, k_source, c0: int, c1: int, n: int,
                chunks: tuple[int, int] | None = None) -> None:
    """FFT along rows of FX's and FK's column band, multiply, inverse FFT, write over FX's band."""
    fx = scipy.fft.fft(fx_location.open_array("r")[:, c0:c1], axis=0, overwrite_x=True)
    fk = scipy.fft.fft(_kernel_row_spectra(k_source, c0, c1, n), axis=0, overwrite_x=True)
    fx *= fk
    del fk
    g = scipy.fft.ifft(fx, axis=0, overwrite_x=True)
    if chunks is None:
        fx_location.open_array("r+")[:, c0:c1] = g
    else:
        write_chunks(fx_location, g, 0, c0, chunks)


def inverse_row_task(g: Location, w: Location, i0: int, i1: int, n: int, chunks: tuple[int, int] | None = None
                     ) -> None:
    rows = scipy.fft.irfft(g.open_array("r")[i0:i1], n=n, axis=1, overwrite_x=True)
    if chunks is None:
        w.open_array("r+")[i0:i1] = rows
    else:
        write_chunks(w, rows, i0, 0, chunks)


def read_w_rows(w: Location, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(r0, r1), w.open_array("r")[r0:r1]


def fft2_convolve(runner, x_source, k_source, n: int, scratch: Location | str, plan: Fft2Plan) -> str:
    """Compute W into ``scratch/W.zarr`` and return its URL (tasks get Locations; a string is a local path)."""
    import zarr

    half = n // 2 + 1
    scratch = _as_location(scratch)
    locs = {name: scratch.child(f"{name}.zarr") for name in ("FX", "FK", "W")}
    stored = [("FX", x_source)] + ([("FK", k_source)] if k_source[0] != "circulant" else [])
    for name, _ in stored:  # scratch: no compression (random spectra do not compress; zstd cost ~2x time)
        zarr.create_array(locs[name].url, shape=(n, half), dtype=np.complex64, chunks=(plan.row_chunk, plan.col_chunk),
                          compressors=None, overwrite=True, storage_options=locs[name].zarr_options)
    zarr.create_array(locs["W"].url, shape=(n, n), dtype=np.float32, chunks=(plan.row_chunk, n), compressors=None,
                      overwrite=True, storage_options=locs["W"].zarr_options)
    rows = [(i, min(n, i + plan.row_chunk)) for i in range(0, n, plan.row_chunk)]
    cols = [(c, min(half, c + plan.col_chunk)) for c in range(0, half, plan.col_chunk)]
    spectra, w_chunks = (plan.row_chunk, plan.col_chunk), (plan.row_chunk, n)  # tasks write whole chunks
    runner.map(row_fft_task, [(src, i0, i1, n, locs[name], spectra) for name, src in stored for i0, i1 in rows],
               desc="fft2 rows")
    k_spectra = k_source if k_source[0] == "circulant" else ("zarr", locs["FK"])
    runner.map(column_task, [(locs["FX"], k_spectra, c0, c1, n, spectra) for c0, c1 in cols], desc="fft2 columns")
    runner.map(inverse_row_task, [(locs["FX"], locs["W"], i0, i1, n, w_chunks) for i0, i1 in rows],
               desc="fft2 inverse")
    return locs["W"].url


# ---------------------------------------------------------------------------------------
# the method: operator blocks → X in rank-row bands → W → randomized SVD

SPILL_BYTES_PER_ENTRY = 12  # int32 band row, int32 rank column, float32 value


def plan(n: int, nnz: int, params, memory, scheduler, **fit_args) -> MemoryPlan:
    """Memory of the literal path. A task holds, besides one operator block, the randomized SVD's two
    panels next to a W row band (the bands are sized from what is left, :func:`plan_fft2`); the client
    the SVD's five panels and the folded diagonal sums. X is never gathered in the client."""
    l = RsvdParams(params.oversample, params.power_iters, params.seed).l(params.dim, n)
    task, client = rsvd_bytes(n, l)
    band = ROW_BYTES_PER_ENTRY * n  # at least one row of every band
    return fit(f"fft2 (V_eff={n}, l={l})", task + band, client + 2 * n * 8, memory, scheduler,
               hint="lower --v-eff, --dim or --oversample, or use --method exact", **fit_args)


def band_spill_task(spec, block_group, inv_rank: np.ndarray, row_chunk: int, scratch: Location | str) -> list:
    """Spill each block's rank-ordered entries by rank-row band: one piece per (band, block).

    Returns the ``(band start, block start)`` of every piece written, so row
    tasks are told which pieces exist instead of probing the store.
    """
    scratch = _as_location(scratch)
    written = []
    for r0, r1 in block_group:
        coo = load_block(spec, r0, r1).tocoo()
        rows, cols = inv_rank[coo.row + r0], inv_rank[coo.col]
        band = rows // row_chunk
        order = np.argsort(band, kind="stable")
        bounds = np.flatnonzero(np.diff(band[order])) + 1
        for sel in np.split(order, bounds) if order.size else []:
            i0 = int(band[sel[0]]) * row_chunk
            save_array(scratch.child(f"xband-{i0:07d}-{r0:07d}.rc.npy"),
                       np.stack([rows[sel] - i0, cols[sel]]).astype(np.int32))
            save_array(scratch.child(f"xband-{i0:07d}-{r0:07d}.val.npy"), coo.data[sel].astype(np.float32))
            written.append((i0, r0))
    return written


def band_pieces(spilled: list) -> dict:
    """``{band start: (block starts…)}`` from what :func:`band_spill_task` calls returned."""
    out: dict = {}
    for written in spilled:
        for i0, r0 in written:
            out.setdefault(i0, []).append(r0)
    return {i0: tuple(sorted(r0s)) for i0, r0s in out.items()}


def _band_rows(scratch: Location | str, pieces: dict, i0: int, i1: int, n: int) -> np.ndarray:
    """Dense float32 rows [i0, i1) of X from the pieces the spill tasks wrote for that band."""
    scratch = _as_location(scratch)
    rows, cols, vals = [], [], []
    for r0 in pieces.get(i0, ()):
        rc = load_array(scratch.child(f"xband-{i0:07d}-{r0:07d}.rc.npy"))
        rows.append(rc[0])
        cols.append(rc[1])
        vals.append(load_array(scratch.child(f"xband-{i0:07d}-{r0:07d}.val.npy")))
    if not vals:
        return np.zeros((i1 - i0, n), np.float32)
    m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(i1 - i0, n))
    return m.toarray().astype(np.float32, copy=False)


def embed(runner, spec, groups, inv_rank: np.ndarray, n: int, params, scratch: Location, memory_plan: MemoryPlan,
          nnz: int):
    """``(rows, spectrum, {}, None)``: the literal formula's W, then ``U_d · √S_d`` of W (rank order).

    A kernel file given by the user lives on the client's disk: it is copied
    into ``scratch`` first, so tasks on other machines read it there.
    """
    scratch = _as_location(scratch)
    k_loc = scratch.child("kernel.npy")
    if params.kernel == "circulant":  # k0 from the diagonal sums, as the exact path computes them
        g = diagonals(runner, spec, groups, inv_rank, n)
        save_array(k_loc, g / n)
        k_source = ("circulant", k_loc)
    else:
        k = np.load(params.kernel, mmap_mode="r")
        save_array(k_loc, k)
        k_source = ("circulant", k_loc) if k.ndim == 1 else ("dense", k_loc)
    band_memory = memory_plan.cluster.task_memory - memory_plan.task_bytes + ROW_BYTES_PER_ENTRY * n
    free = free_bytes(scratch)  # an object store has no disk to fill
    plan = plan_fft2(n, band_memory, free if free is not None else 1 << 62, spill_bytes=nnz * SPILL_BYTES_PER_ENTRY)
    log(plan.describe())
    spilled = runner.map(band_spill_task, [(spec, grp, inv_rank, plan.row_chunk, scratch) for grp in groups],
                         desc="fft2 spill X")
    x_source = ("bands", (scratch, band_pieces(spilled)))
    fft2_convolve(runner, x_source, k_source, n, scratch, plan)
    bands = [(i, min(n, i + plan.row_chunk)) for i in range(0, n, plan.row_chunk)]
    matmul, rmatmul = block_products(runner, partial(read_w_rows, scratch.child("W.zarr")), bands, n)
    u, s = randomized_svd(matmul, rmatmul, n, n, params.dim,
                          RsvdParams(params.oversample, params.power_iters, params.seed))
    return (u * np.sqrt(s)).astype(np.float32), s, {}, None
