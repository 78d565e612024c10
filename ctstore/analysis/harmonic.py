"""Harmonic (Gaussian) fits of weight rows (Papers 56, 66).

L1 fit, per row i of an R × n matrix:

    W[i, j] ≈ Σ_k A[i,k] · exp(−(j − μ[i,k])² / (2 σ[i,k]²)),   k = 1..K

fitted for all rows at once (torch, batched Levenberg-Marquardt with the
analytic Jacobian), so an iteration costs one batched 3K × 3K solve per row
instead of one ``curve_fit`` per row. Centres start at the closed form
``μ_k = n/(K+1)·(k+1)`` (k = 0..K−1); each row starts from the best of a few
common widths (0.35–1 × ``n/(2(K+1))``) with least-squares amplitudes.

Cost (issue 12): the normal equations come from one product ``[J | r]ᵀ[J | r]``
per row; the iterations run on a coarse grid (every s-th column, s ≈ σ₀/3 for
the initial width σ₀ = n/(2(K+1))); only rows whose full-row residual shows
structure the coarse grid missed continue on the full row; rows leave the batch
when a step moves their R² by less than ``tol``; restarts skip rows already at
their noise floor; chunks of rows run in parallel threads (one torch thread
each). 15,007 × 256 rows, K = 4: see benchmarks/RESULTS.md.

Compression ratio = n / (3K) parameters per row (256 columns, K = 4: 21.3×, the
figure Paper 56 quotes). R² = 1 − SSE / SST over the whole matrix (per-row R²
is returned too).

L2 fit (Paper 56): each of the 3K L1 parameter series, as a function of the
row index, is itself fitted with Gaussians; the full reconstruction R² rebuilds
W from the L2-reconstructed L1 parameters. Smooth parameter series compress;
shuffled rows do not.

The Levenberg-Marquardt fitter itself is :mod:`ctstore.analysis.gaussian_lm`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .gaussian_lm import coarse_stride, fit_chunk

# Default amplitude penalty (per column, ``ridge·n·‖A‖²``): none. On rough rows (trained layers)
# unpenalised fits use pairs of huge cancelling Gaussians (|A| > 100 for weights below 1.1), which
# describe the row but make its parameters meaningless for an L2 fit; ``ridge=1e-5`` curbs that
# (max |A| 3.9) at no cost in L1 R² there, but on smooth planted rows any penalty lowers the L2
# reconstruction (0.99998 -> 0.985-0.99), so it is the caller's choice (paper56 uses 1e-5).
RIDGE = 0.0

__all__ = ["HarmonicFit", "fit_harmonic", "chunk_bounds", "gaussian_basis", "reconstruct", "fit_l2", "initial_centres"]


@dataclass
class HarmonicFit:
    amplitude: np.ndarray  # (R, K)
    centre: np.ndarray  # (R, K)
    width: np.ndarray  # (R, K)
    reconstruction: np.ndarray  # (R, n)
    mse: float
    r2: float
    r2_rows: np.ndarray
    compression_ratio: float

    @property
    def K(self) -> int:
        return self.amplitude.shape[1]


def initial_centres(n: int, K: int) -> np.ndarray:
    """The closed-form centre initialisation ``μ_k = n/(K+1)·(k+1)``."""
    return n / (K + 1) * (np.arange(K) + 1)


def gaussian_basis(n: int, centre: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """(R, n, K) values of each row's K Gaussians at columns 0..n-1."""
    j = torch.arange(n, dtype=centre.dtype, device=centre.device)[None, :, None]
    return torch.exp(-((j - centre[:, None, :]) ** 2) / (2 * width[:, None, :] ** 2))


def fit_harmonic(w, K: int = 4, steps: int = 20, init: str = "closed-form", device: str = "cpu",
                 chunk_rows: int = 4096, dtype=torch.float32, ridge: float = None, coarse: bool = True,
                 tol: float = 1e-5) -> HarmonicFit:
    """Fit K Gaussians to every row of ``w`` at once (see module docstring).

    Batched Levenberg-Marquardt on (A, μ, log σ) with the analytic Jacobian: every
    row takes its own damped Gauss-Newton step (a 3K × 3K solve) per iteration and
    keeps its own damping, so rows converge independently; a row leaves the batch
    once an accepted step moves its R² by less than ``tol``, so the cost follows the
    rows that still move, not ``steps`` × all rows. With ``coarse`` the iterations run
    on every s-th column (s = ⌊σ₀/3⌋ for the initial width σ₀, at least 32 columns
    kept); rows whose full-row error shows structure between those columns (more
    than twice what noise alone leaves) continue on the full row from there;
    ``coarse=False`` fits on the full grid only. Rows left with R² < 0.999 (a
    component that wandered off or collapsed) and above their noise floor get up to
    two restarts with their weakest Gaussian moved to the largest residual. Rows are
    processed in chunks of at most ``chunk_rows`` (:func:`chunk_bounds`: equal chunks, as
    many as the threads or a multiple); float32 by default.

    Tuning: every LM step costs a few dozen torch ops per chunk whatever its size, so
    larger chunks cost less per row (15,007 × 256, K = 4, one thread: 10,900 rows per
    CPU-s in chunks of 2,048, 12,900 in chunks of 4,096); temporaries grow by about
    14 kB per row of a chunk on the full grid (56 MB per thread at 4,096).
    """
    w_np = np.asarray(w, np.float64)
    R, n = w_np.shape
    if init == "closed-form":
        mu0 = np.broadcast_to(initial_centres(n, K), (R, K))
    elif init == "peaks":
        mu0 = np.sort(np.argsort(-np.abs(w_np), axis=1)[:, :K], axis=1).astype(np.float64)
    else:
        raise ValueError(f"init must be closed-form or peaks, not {init!r}")
    stride = coarse_stride(n, K) if coarse else 1

    def chunk(bounds):
        r0, r1 = bounds
        return fit_chunk(torch.as_tensor(w_np[r0:r1], dtype=dtype, device=device),
                          torch.as_tensor(np.array(mu0[r0:r1]), dtype=dtype, device=device), n, K, steps,
                          RIDGE if ridge is None else ridge, stride=stride, tol=tol)

    threads = torch.get_num_threads() if device == "cpu" else 1
    chunks = chunk_bounds(R, chunk_rows, threads)
    if threads == 1 or len(chunks) <= 1:
        parts = [chunk(bounds) for bounds in chunks]
    else:
        # chunks in parallel threads, each op single-threaded: the ops are small, and intra-op threads
        # synchronise at every op (badly so on a busy machine); torch releases the GIL inside ops
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(min(threads, len(chunks))) as pool:
                parts = list(pool.map(chunk, chunks))
        finally:
            torch.set_num_threads(threads)
    amp, mu, width, recon = (np.concatenate([p[i] for p in parts]).astype(np.float64) for i in range(4))
    return _result(w_np, amp, mu, width, recon)



def chunk_bounds(R: int, chunk_rows: int, threads: int) -> list[tuple[int, int]]:
    """``[(r0, r1), ...]``: R rows in equal chunks of at most ``chunk_rows``, their number a multiple of
    ``threads`` when there are enough rows (at least 64 a chunk), so that no thread is left with one chunk
    more than the others (1,024-row chunks of 3,000 rows on two threads ran 2 + 1: 1.5 threads' worth)."""
    if R <= 0:
        return []
    count = -(-R // max(1, chunk_rows))
    if threads > 1:
        count = -(-count // threads) * threads
        while count > 1 and R // count < 64:
            count -= 1
    size = -(-R // count)
    return [(r0, min(R, r0 + size)) for r0 in range(0, R, size)]


def _result(w, amp, centre, width, recon) -> HarmonicFit:
    resid = w - recon
    sse_rows = (resid ** 2).sum(axis=1)
    sst_rows = ((w - w.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    sst = float(((w - w.mean()) ** 2).sum())
    r2_rows = 1 - sse_rows / np.where(sst_rows > 0, sst_rows, np.nan)
    return HarmonicFit(amp, centre, width, recon, float((resid ** 2).mean()),
                       float(1 - sse_rows.sum() / sst) if sst > 0 else 0.0, r2_rows,
                       w.shape[1] / (3 * amp.shape[1]))


def reconstruct(amplitude, centre, width, n: int) -> np.ndarray:
    as_t = lambda x: torch.as_tensor(np.array(x, dtype=np.float64))  # noqa: E731
    basis = gaussian_basis(n, as_t(centre), as_t(width))
    return (basis @ as_t(amplitude)[:, :, None])[:, :, 0].numpy()


@dataclass
class L2Fit:
    series_r2: np.ndarray  # (3K,) R² of each L1 parameter series' fit
    full_r2: float  # R² of W rebuilt from L2-reconstructed L1 parameters
    compression_ratio: float  # (R·n) / (3K · 3K2)


def fit_l2(w, l1: HarmonicFit, K2: int = 4, steps: int = 40) -> L2Fit:
    """Fit every L1 parameter series across rows with K2 Gaussians; rebuild W from them."""
    w = np.asarray(w, np.float64)
    R, n = w.shape
    series = np.concatenate([l1.amplitude.T, l1.centre.T, np.log(l1.width.T)], axis=0)  # (3K, R)
    fit = fit_harmonic(series, K=K2, steps=steps, ridge=0.0)
    K = l1.K
    amp, centre, log_width = fit.reconstruction[:K].T, fit.reconstruction[K:2 * K].T, fit.reconstruction[2 * K:].T
    rebuilt = reconstruct(amp, centre, np.exp(np.clip(log_width, -5, np.log(8 * n))), n)
    sst = float(((w - w.mean()) ** 2).sum())
    full = 1 - float(((w - rebuilt) ** 2).sum()) / sst if sst > 0 else 0.0
    return L2Fit(fit.r2_rows, full, (R * n) / (3 * K * 3 * K2))
