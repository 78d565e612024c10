"""The exact circulant form of the seeds' K0 formula (docs/design.md §4): ``--kernel circulant --method exact``.

The seeds define ``W = IFFT2(FFT2(X) ⊙ FFT2(circ(k0)))`` with
``k0[m] = (1/n) Σ_i X[i, (i+m) mod n]`` (the best circulant approximation of X
averages each circular diagonal) and ``circ(k)[i, j] = k[(j - i) mod n]``.

The product of 2-D FFTs is a 2-D circular convolution, and convolving with a
circulant collapses to diagonals:

    W[i, j] = Σ_m g[m] · k[(j − i − m) mod n],   g[m] = Σ_i X[i, (i+m) mod n]

so W is circulant with first row ``r = g ⊛ k``. Its SVD is analytic: for
``R = FFT(r)`` the singular values are ``|R[p]|``; mode p (0 < p < n/2) has the
real right singular vectors ``√(2/n)·cos(2πpj/n)``, ``√(2/n)·sin(2πpj/n)`` and
left singular vectors ``√(2/n)·cos(2πpi/n + φ_p)``, ``√(2/n)·sin(2πpi/n + φ_p)``
with ``φ_p = −arg R[p]``: the two share one singular value (the eigenvalue
pairing that Paper 56 reports). Modes 0 and n/2 are single.

Consequence worth stating to users: an embedding from this operator is a set of
Fourier features of each token's *frequency rank*, not learned semantics.

The method (:func:`plan`, :func:`embed`): one streaming pass over the operator
blocks sums the diagonals (a length-n float64 accumulator per task, folded in
the client), then the analytic SVD above in the client. Cost O(nnz + V log V);
no dense matrix anywhere. Everything above :func:`plan` is pure arithmetic.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from .blocks import load_block
from .budget import MemoryPlan, fit

__all__ = [
    "diagonal_sums", "k0_from_diagonals", "circulant_first_row", "circulant_matrix",
    "circulant_svd", "literal_k0", "circulant_embedding", "plan", "diagonals", "embed",
]


def diagonal_sums(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """``g[m] = Σ X[i, j]`` over entries with ``(j − i) mod n == m`` (float64, length n)."""
    m = (np.asarray(cols, np.int64) - np.asarray(rows, np.int64)) % n
    return np.bincount(m, weights=np.asarray(values, np.float64), minlength=n)


def k0_from_diagonals(g: np.ndarray) -> np.ndarray:
    return g / g.size


def circulant_first_row(g: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``r = g ⊛ k`` (1-D circular convolution), the first row of W."""
    return scipy.fft.irfft(scipy.fft.rfft(g) * scipy.fft.rfft(k), n=g.size)


def circulant_matrix(r: np.ndarray) -> np.ndarray:
    """Dense ``C[i, j] = r[(j − i) mod n]`` (tests and small n only)."""
    n = r.size
    idx = (np.arange(n)[None, :] - np.arange(n)[:, None]) % n
    return r[idx]


def literal_k0(x: np.ndarray) -> np.ndarray:
    """The seeds' formula computed literally with ``numpy.fft`` (reference, O(n² log n))."""
    n = x.shape[0]
    g = np.array([np.trace(np.roll(x, -m, axis=1)) for m in range(n)]) if n <= 64 else \
        diagonal_sums(*np.nonzero(x), x[np.nonzero(x)], n)
    kernel = circulant_matrix(k0_from_diagonals(g))
    return np.real(np.fft.ifft2(np.fft.fft2(x) * np.fft.fft2(kernel)))


def _modes(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct frequencies p in [0, n//2] and whether each is a cos/sin pair."""
    p = np.arange(n // 2 + 1)
    paired = (p > 0) & (2 * p != n)
    return p, paired


def select_modes(magnitudes: np.ndarray, n: int, d: int) -> list[tuple[int, str]]:
    """Top-d real modes by singular value, never splitting a cos/sin pair when avoidable.

    Returns ``[(p, "cos"|"sin"|"single"), ...]`` of length ``min(d, n)``. When one slot
    is left and the next unit is a pair, the next single mode (0 or n/2) fills
    it if it exists; otherwise the pair's cosine half does (the only split).
    """
    p, paired = _modes(n)
    order = sorted(p.tolist(), key=lambda q: (-magnitudes[q], q))
    out: list[tuple[int, str]] = []
    pending_singles = [q for q in order if not paired[q]]
    for q in order:
        left = min(d, n) - len(out)
        if left <= 0:
            break
        if not paired[q]:
            if (q, "single") not in out:
                out.append((q, "single"))
            continue
        if left >= 2:
            out += [(q, "cos"), (q, "sin")]
        else:
            single = next((s for s in pending_singles if (s, "single") not in out), None)
            out.append((single, "single") if single is not None else (q, "cos"))
    return out[: min(d, n)]


def circulant_svd(r: np.ndarray, d: int):
    """Top-d SVD of the circulant with first row r: ``(U (n×d), S (d,), V (n×d), modes)``."""
    n = r.size
    spectrum = scipy.fft.rfft(r)  # R[p] for p = 0..n//2
    mags = np.abs(spectrum)
    modes = select_modes(mags, n, d)
    i = np.arange(n)
    u = np.empty((n, len(modes)), np.float64)
    v = np.empty_like(u)
    s = np.empty(len(modes), np.float64)
    for c, (p, kind) in enumerate(modes):
        theta = 2 * np.pi * p * i / n
        s[c] = mags[p]
        if kind == "single":
            base = np.cos(theta) / np.sqrt(n)  # constant (p = 0) or alternating (p = n/2)
            sign = 1.0 if spectrum[p].real >= 0 else -1.0
            u[:, c], v[:, c] = sign * base, base
        else:
            phi = -np.angle(spectrum[p])
            trig = np.cos if kind == "cos" else np.sin
            u[:, c] = np.sqrt(2 / n) * trig(theta + phi)
            v[:, c] = np.sqrt(2 / n) * trig(theta)
    return u, s, v, modes


def circulant_embedding(g: np.ndarray, d: int, kernel: np.ndarray | None = None):
    """Embedding rows (in rank order) ``U_d · sqrt(S_d)`` of the exact K0 from diagonal sums g."""
    k = k0_from_diagonals(g) if kernel is None else kernel
    r = circulant_first_row(g, k)
    u, s, _, modes = circulant_svd(r, d)
    return (u * np.sqrt(s)).astype(np.float32), s, modes, r


# ---------------------------------------------------------------------------------------
# the method


def plan(n: int, d: int, memory, scheduler, **fit_args) -> MemoryPlan:
    """Memory of the exact path: g (n float64) per task; in the client the folded g and the
    arriving one, the SVD's u and v (n × d float64), the rows (n × d float32), three n-long temporaries."""
    return fit("circulant exact", n * 8, 2 * n * 8 + n * d * (8 + 8 + 4) + 3 * n * 8, memory, scheduler,
               **fit_args)


def diagonal_task(spec, block_group, inv_rank: np.ndarray, n: int) -> np.ndarray:
    """Diagonal sums g of the rank-ordered operator, over the blocks of one task."""
    g = np.zeros(n, np.float64)
    for r0, r1 in block_group:
        coo = load_block(spec, r0, r1).tocoo()
        g += diagonal_sums(inv_rank[coo.row + r0], inv_rank[coo.col], coo.data, n)
    return g


def diagonals(runner, spec, groups, inv_rank: np.ndarray, n: int) -> np.ndarray:
    """g of the whole operator: one task per block group, folded in group order (same bits anywhere)."""
    return runner.map_reduce(diagonal_task, [(spec, grp, inv_rank, n) for grp in groups],
                             lambda acc, x: x if acc is None else acc + x, desc="k0 diagonals")


def embed(runner, spec, groups, inv_rank: np.ndarray, n: int, d: int):
    """``(rows, spectrum, attrs, first_row)`` of the exact K0 of the operator ``spec`` (rank order)."""
    g = diagonals(runner, spec, groups, inv_rank, n)
    rows, spectrum, modes, first_row = circulant_embedding(g, d)
    attrs = {"paired_modes": sum(1 for _, kind in modes if kind != "single") // 2,
             "first_row_norm": float(np.linalg.norm(first_row))}
    return rows, spectrum, attrs, first_row
