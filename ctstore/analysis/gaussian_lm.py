"""The batched Levenberg-Marquardt fitter behind :func:`ctstore.analysis.harmonic.fit_harmonic`.

One chunk of rows at a time (:func:`fit_chunk`): least-squares amplitudes at a
few common start widths, LM on a coarse grid of columns (:func:`coarse_stride`),
restarts of rows that got stuck, then LM on the full row for rows whose
full-row residual shows structure the coarse grid missed. Parameters per row
are ``θ = (A_1..K, μ_1..K, log σ_1..K)``; each iteration solves one damped
3K × 3K system per row from the normal equations ``[J | r]ᵀ[J | r]``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["coarse_stride", "fit_chunk"]

# Start widths (× n/(2(K+1))) tried with least-squares amplitudes; each row starts from its best
START_WIDTHS = (0.35, 0.5, 0.7, 1.0)
# A row continues on the full grid when its coarse fit's R² there falls short of its R² on the coarse
# grid by more than this (and then stops when a step gains less than this)
FINE_TOL = 1e-4
# A row is fitted afresh on the full grid when its coarse optimum's R² on the full row falls this far short
# of its R² on the coarse grid (the coarse grid misled it: rough rows)
ROUGH_GAP = 0.05


def _solve_amplitudes(basis: torch.Tensor, w: torch.Tensor, ridge: float) -> torch.Tensor:
    gram = basis.transpose(1, 2) @ basis
    gram = gram + ridge * torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    rhs = basis.transpose(1, 2) @ w[:, :, None]
    return torch.linalg.solve(gram, rhs)[:, :, 0]


def coarse_stride(n: int, K: int) -> int:
    """Column stride of the coarse phase: ~3 samples per initial σ, never fewer than 32 columns."""
    return int(max(1, min(np.floor(n / (2 * (K + 1)) / 3), n // 32)))


@torch.inference_mode()  # no autograd bookkeeping: ~9% of the CPU time of these small batched ops
def fit_chunk(y: torch.Tensor, mu: torch.Tensor, n: int, K: int, steps: int, ridge: float, restarts: int = 2,
              stride: int = 1, tol: float = 1e-6):
    """Fit one chunk of rows: coarse grid (initial amplitudes, LM, restarts of stuck rows), then LM on
    the full grid from the coarse optimum; returns (A, μ, σ, reconstruction) as numpy arrays."""
    theta, recon = _fit(y, mu, n, K, steps, ridge, restarts, stride, tol)
    amp, mu, width = theta[:, :K], theta[:, K:2 * K], theta[:, 2 * K:].exp()
    return amp.cpu().numpy(), mu.cpu().numpy(), width.cpu().numpy(), recon.cpu().numpy()


def _fit(y: torch.Tensor, mu: torch.Tensor, n: int, K: int, steps: int, ridge: float, restarts: int,
         stride: int, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fit_chunk` as tensors: (θ, reconstruction on the full row)."""
    R = y.shape[0]
    full = torch.arange(n, dtype=y.dtype, device=y.device)
    cols, yc = full[::stride], y[:, ::stride].contiguous()
    sst = (yc - yc.mean(dim=1, keepdim=True)).pow(2).sum(dim=1).clamp(min=1e-30)
    theta = best = None
    for factor in START_WIDTHS:  # a moment-style start: the common width whose least-squares fit is best
        log_s = torch.full((R, K), float(np.log(factor * n / (2 * (K + 1)))), dtype=y.dtype, device=y.device)
        t = _with_amplitudes(yc, cols, mu, log_s, ridge)
        e = _objective(_basis_at(cols, mu, log_s.exp()), t, yc, cols.numel(), K, ridge)
        if theta is None:
            theta, best = t, e
        else:
            theta = torch.where((e < best)[:, None], t, theta)
            best = torch.minimum(e, best)
    theta, sse = _lm(yc, theta, cols, n, K, steps, ridge, tol * sst)
    for _ in range(restarts):
        # rows stuck in a local minimum (typically a component that wandered off or collapsed):
        # move their weakest component to the largest residual and continue from there
        stuck = torch.nonzero(sse / sst > 1e-3).flatten()
        if stuck.numel() and n > 2:
            # unless the residual is already at the row's noise floor, estimated from its second
            # differences (variance 6σ² for white noise; median form): no restart can go below that
            d2 = y[stuck, 2:] - 2 * y[stuck, 1:-1] + y[stuck, :-2]
            floor = (d2.abs().median(dim=1).values / 0.6745).pow(2) / 6 * cols.numel()
            stuck = stuck[sse[stuck] > 2 * floor]
        if stuck.numel() == 0:
            break
        t = theta[stuck].clone()
        g = _basis_at(cols, t[:, K:2 * K], t[:, 2 * K:].exp())
        resid = yc[stuck] - (t[:, :K, None] * g).sum(dim=1)
        weakest = (t[:, :K].abs() * t[:, 2 * K:].exp()).argmin(dim=1)
        rows = torch.arange(stuck.numel(), device=y.device)
        t[rows, K + weakest] = cols[resid.abs().argmax(dim=1)]
        t[rows, 2 * K + weakest] = float(np.log(n / (2 * (K + 1))))
        t = _with_amplitudes(yc[stuck], cols, t[:, K:2 * K], t[:, 2 * K:], ridge)
        t, t_sse = _lm(yc[stuck], t, cols, n, K, steps, ridge, tol * sst[stuck])
        better = t_sse < sse[stuck]
        theta[stuck[better]] = t[better]
        sse[stuck[better]] = t_sse[better]
    recon = _reconstruct(theta, full, K)
    if stride > 1:
        # rows that the coarse grid describes clearly worse than the full row (structure between the
        # sampled columns) continue on the full grid from the coarse optimum; the rest are done. With
        # p = 3K parameters fitted to m columns, white noise alone leaves a full-row mean squared error
        # (1 + p/m)/(1 − p/m) times the coarse one; twice that is the mark of missed structure.
        m, p = cols.numel(), 3 * K
        sse_full = (y - recon).pow(2).sum(dim=1)
        sse_coarse = (yc - _reconstruct(theta, cols, K)).pow(2).sum(dim=1)
        sst_full = (y - y.mean(dim=1, keepdim=True)).pow(2).sum(dim=1).clamp(min=1e-30)
        noise_ratio = 2 * (1 + p / m) / max(1 - p / m, 0.1)
        missed = (sse_full / n > noise_ratio * sse_coarse / m) & (sse_full / sst_full > sse_coarse / sst + FINE_TOL)
        refine = torch.nonzero(missed).flatten()
        if refine.numel():
            t, _ = _lm(y[refine], theta[refine], full, n, K, steps, ridge, max(tol, FINE_TOL) * sst_full[refine])
            theta[refine] = t
            recon[refine] = _reconstruct(t, full, K)
        # On rough rows (noise-like) the coarse optimum fits the sampled columns with narrow Gaussians
        # that are wrong between them, and LM on the full row from there stays in that basin: R² fell to
        # -0.2 on white noise, where the full grid from the start widths gets +0.05..0.1 (issue 18 item 4).
        # Rows whose full-row R² falls ROUGH_GAP short of their coarse-grid R² are fitted afresh on the
        # full grid; the better of the two stays. Smooth rows never get here, so this costs rough rows only.
        sse_full = (y - recon).pow(2).sum(dim=1)
        rough = torch.nonzero(sse_full / sst_full > sse_coarse / sst + ROUGH_GAP).flatten()
        if rough.numel():
            t, r = _fit(y[rough], mu[rough], n, K, steps, ridge, restarts, 1, tol)
            better = (y[rough] - r).pow(2).sum(dim=1) < sse_full[rough]
            theta[rough[better]] = t[better]
            recon[rough[better]] = r[better]
    return theta, recon


def _reconstruct(theta: torch.Tensor, cols: torch.Tensor, K: int) -> torch.Tensor:
    return (theta[:, :K, None] * _basis_at(cols, theta[:, K:2 * K], theta[:, 2 * K:].exp())).sum(dim=1)


def _with_amplitudes(y, cols, mu, log_s, ridge):
    """Parameters with least-squares amplitudes for the given centres and widths."""
    amp = _solve_amplitudes(_basis_at(cols, mu, log_s.exp()).transpose(1, 2), y, max(ridge, 1e-6) * cols.numel())
    return torch.cat([amp, mu, log_s], dim=1)


def _exp_floor(dtype: torch.dtype) -> float:
    """The smallest exponent :func:`_basis_at` passes to ``exp``: one above log(smallest normal number)."""
    return float(np.log(torch.finfo(dtype).tiny)) + 1.0


def _basis_at(cols: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(R, K, m) values of each row's K Gaussians at the columns ``cols`` (m,) (component-major).

    Exponents are floored at :func:`_exp_floor` (−86.3 in float32: a Gaussian's
    value far out in its tail is 3e-38 instead of 0 or a subnormal number). torch's
    vectorised ``exp`` leaves its fast path when a result underflows: on the full
    grid, where most columns lie many σ from a centre, ``exp_`` took 15× longer
    (248 vs 17 ms for 15M float32 values) and a fifth of the fit's CPU time.
    """
    d = cols - mu[:, :, None]
    d *= d
    d *= (-0.5 / sigma ** 2)[:, :, None]
    return d.clamp_(min=_exp_floor(d.dtype)).exp_()


def _objective(g, theta, y, n, K, ridge):
    """Squared error plus the amplitude penalty ridge·n·‖A‖² (scale-free: both terms scale with y²)."""
    resid = (theta[:, :K, None] * g).sum(dim=1) - y
    sse = (resid * resid).sum(dim=1)
    return sse + ridge * n * theta[:, :K].pow(2).sum(dim=1) if ridge else sse


def _lm(y: torch.Tensor, theta: torch.Tensor, cols: torch.Tensor, n: int, K: int, steps: int, ridge: float,
        gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Levenberg-Marquardt iterations on the columns ``cols`` (y holds the row values there), every
    row with its own damping. A row whose accepted step lowers its objective by less than ``gain``
    (per row: tol × the row's sum of squares, i.e. R² moved by < tol), or whose steps keep failing,
    is done and leaves the batch, so later iterations only pay for the rows that still move. The
    amplitude penalty is scaled to the sampled columns (ridge·m·‖A‖² for m of them). Returns the
    parameters and their objective values."""
    m = cols.numel()
    p = 3 * K
    out = theta.clone()
    out_sse = torch.empty(theta.shape[0], dtype=y.dtype, device=y.device)
    idx = torch.arange(theta.shape[0], device=y.device)
    g = _basis_at(cols, theta[:, K:2 * K], theta[:, 2 * K:].exp())
    sse = _objective(g, theta, y, m, K, ridge)
    damping = torch.full((theta.shape[0], 1), 1e-2, dtype=y.dtype, device=y.device)
    eye = torch.eye(p, dtype=y.dtype, device=y.device)
    for _ in range(steps):
        # [J | r]ᵀ [J | r] in one batched product: JᵀJ and Jᵀr together
        aug = _augmented_jacobian(theta, g, y, cols, K)
        normal = aug @ aug.transpose(1, 2)
        jtj, jtr = normal[:, :p, :p], normal[:, :p, p].clone()
        if ridge:  # the amplitude penalty as extra residual rows √(ridge·m)·A
            jtj[:, :K, :K] += ridge * m * eye[:K, :K]
            jtr[:, :K] -= ridge * m * theta[:, :K]
        diag = torch.diagonal(jtj, dim1=1, dim2=2)
        jtj.diagonal(dim1=1, dim2=2).add_(damping * diag + 1e-9)
        delta = _spd_solve(jtj, jtr)
        candidate = _clamped(theta + delta, n, K)
        g_new = _basis_at(cols, candidate[:, K:2 * K], candidate[:, 2 * K:].exp())
        new_sse = _objective(g_new, candidate, y, m, K, ridge)
        better = new_sse < sse
        done = (better & (sse - new_sse <= gain)) | (~better & (damping[:, 0] >= 1e2))
        theta = torch.where(better[:, None], candidate, theta)
        g = torch.where(better[:, None, None], g_new, g)
        sse = torch.where(better, new_sse, sse)
        damping = torch.where(better[:, None], damping / 3, damping * 4).clamp(1e-7, 1e7)
        n_done = int(done.sum())
        if n_done and n_done * 16 >= idx.numel():  # compact: finished rows leave the batch
            out[idx[done]], out_sse[idx[done]] = theta[done], sse[done]
            keep = ~done
            if n_done == idx.numel():
                return out, out_sse
            idx, theta, g, sse, damping, y, gain = (idx[keep], theta[keep], g[keep], sse[keep], damping[keep],
                                                    y[keep], gain[keep])
    out[idx], out_sse[idx] = theta, sse
    return out, out_sse




def _spd_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched solve of the damped normal equations by Cholesky (LU for rows where it fails)."""
    chol, info = torch.linalg.cholesky_ex(a)
    x = torch.cholesky_solve(b[:, :, None], chol)[:, :, 0]
    bad = torch.nonzero(info).flatten()
    if bad.numel():
        x[bad] = torch.linalg.solve(a[bad], b[bad, :, None])[:, :, 0]
    return x


def _clamped(theta: torch.Tensor, n: int, K: int) -> torch.Tensor:
    theta = theta.clone()
    theta[:, K:2 * K].clamp_(-0.1 * n, 1.1 * n)  # a centre far outside the row explains nothing
    theta[:, 2 * K:].clamp_(0.0, float(np.log(4 * n)))  # σ ≥ 1 column
    return theta


def _augmented_jacobian(theta: torch.Tensor, g: torch.Tensor, y: torch.Tensor, cols: torch.Tensor, K: int):
    """``[J | r]`` (R, m, 3K+1): the model's Jacobian at theta on the columns ``cols`` (given its basis
    g, (R, m, K)) with the residual as the last column. Written in place into one buffer."""
    amp, mu, sigma = theta[:, :K, None], theta[:, K:2 * K, None], theta[:, 2 * K:, None].exp()
    R, m = y.shape
    out = torch.empty((R, 3 * K + 1, m), dtype=y.dtype, device=y.device)  # column-major per row
    z = (cols - mu) / sigma
    out[:, :K] = g  # (R, K, m)
    agz = torch.mul(amp, g, out=out[:, K:2 * K])
    torch.sub(y, agz.sum(dim=1), out=out[:, 3 * K])  # the residual, from the same A g
    agz *= z
    torch.mul(agz, z, out=out[:, 2 * K:3 * K])  # d/dlogσ = A g z²
    agz /= sigma  # d/dμ = A g z / σ
    return out
