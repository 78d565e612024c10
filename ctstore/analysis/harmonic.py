"""Harmonic (Gaussian) fits of weight rows (Papers 56, 66).

L1 fit, per row i of an R × n matrix:

    W[i, j] ≈ Σ_k A[i,k] · exp(−(j − μ[i,k])² / (2 σ[i,k]²)),   k = 1..K

fitted for all rows at once (torch, batched Levenberg-Marquardt with the
analytic Jacobian), so an iteration costs one batched 3K × 3K solve per row
instead of one ``curve_fit`` per row; amplitudes start from least squares. Centres start at the closed form
``μ_k = n/(K+1)·(k+1)`` (k = 0..K−1) and widths at ``n/(2(K+1))``.

Compression ratio = n / (3K) parameters per row (256 columns, K = 4: 21.3×, the
figure Paper 56 quotes). R² = 1 − SSE / SST over the whole matrix (per-row R²
is returned too).

L2 fit (Paper 56): each of the 3K L1 parameter series, as a function of the
row index, is itself fitted with Gaussians; the full reconstruction R² rebuilds
W from the L2-reconstructed L1 parameters. Smooth parameter series compress;
shuffled rows do not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Default amplitude penalty (per column, ``ridge·n·‖A‖²``): none. On rough rows (trained layers)
# unpenalised fits use pairs of huge cancelling Gaussians (|A| > 100 for weights below 1.1), which
# describe the row but make its parameters meaningless for an L2 fit; ``ridge=1e-5`` curbs that
# (max |A| 3.9) at no cost in L1 R² there, but on smooth planted rows any penalty lowers the L2
# reconstruction (0.99998 -> 0.985-0.99), so it is the caller's choice (paper56 uses 1e-5).
RIDGE = 0.0

__all__ = ["HarmonicFit", "fit_harmonic", "gaussian_basis", "HarmonicLinear", "fit_l2", "initial_centres"]


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


def _solve_amplitudes(basis: torch.Tensor, w: torch.Tensor, ridge: float) -> torch.Tensor:
    gram = basis.transpose(1, 2) @ basis
    gram = gram + ridge * torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    rhs = basis.transpose(1, 2) @ w[:, :, None]
    return torch.linalg.solve(gram, rhs)[:, :, 0]


def fit_harmonic(w, K: int = 4, steps: int = 20, init: str = "closed-form", device: str = "cpu",
                 chunk_rows: int = 1024, dtype=torch.float32, ridge: float = None) -> HarmonicFit:
    """Fit K Gaussians to every row of ``w`` at once (see module docstring).

    Batched Levenberg-Marquardt on (A, μ, log σ) with the analytic Jacobian: every
    row takes its own damped Gauss-Newton step (a 3K × 3K solve) per iteration and
    keeps its own damping, so rows converge independently. Rows left with R² <
    0.999 (a component that wandered off or collapsed) get up to two restarts with
    their weakest Gaussian moved to the largest residual. Rows are processed in
    chunks of ``chunk_rows`` (cache-sized temporaries); float32 by default.
    """
    w_np = np.asarray(w, np.float64)
    R, n = w_np.shape
    if init == "closed-form":
        mu0 = np.broadcast_to(initial_centres(n, K), (R, K))
    elif init == "peaks":
        mu0 = np.sort(np.argsort(-np.abs(w_np), axis=1)[:, :K], axis=1).astype(np.float64)
    else:
        raise ValueError(f"init must be closed-form or peaks, not {init!r}")
    parts = [_fit_chunk(torch.as_tensor(w_np[r:r + chunk_rows], dtype=dtype, device=device),
                        torch.as_tensor(np.array(mu0[r:r + chunk_rows]), dtype=dtype, device=device), n, K, steps,
                        RIDGE if ridge is None else ridge)
             for r in range(0, R, chunk_rows)]
    amp, mu, width, recon = (np.concatenate([p[i] for p in parts]).astype(np.float64) for i in range(4))
    return _result(w_np, amp, mu, width, recon)


def _fit_chunk(y: torch.Tensor, mu: torch.Tensor, n: int, K: int, steps: int, ridge: float, restarts: int = 2):
    R = y.shape[0]
    log_s = torch.full((R, K), float(np.log(n / (2 * (K + 1)))), dtype=y.dtype, device=y.device)
    theta = _lm(y, _with_amplitudes(y, mu, log_s, n, ridge), n, K, steps, ridge)
    sst = (y - y.mean(dim=1, keepdim=True)).pow(2).sum(dim=1).clamp(min=1e-30)
    for _ in range(restarts):
        # rows stuck in a local minimum (typically a component that wandered off or collapsed):
        # move their weakest component to the largest residual and continue from there
        g = gaussian_basis(n, theta[:, K:2 * K], theta[:, 2 * K:].exp())
        resid = y - (g @ theta[:, :K, None])[:, :, 0]
        stuck = torch.nonzero(resid.pow(2).sum(dim=1) / sst > 1e-3).flatten()
        if stuck.numel() == 0:
            break
        t = theta[stuck].clone()
        weakest = (t[:, :K].abs() * t[:, 2 * K:].exp()).argmin(dim=1)
        rows = torch.arange(stuck.numel(), device=y.device)
        t[rows, K + weakest] = resid[stuck].abs().argmax(dim=1).to(y.dtype)
        t[rows, 2 * K + weakest] = float(np.log(n / (2 * (K + 1))))
        t = _with_amplitudes(y[stuck], t[:, K:2 * K], t[:, 2 * K:], n, ridge)
        t = _lm(y[stuck], t, n, K, steps, ridge)
        old = _sse_of(theta[stuck], y[stuck], n, K, ridge)
        better = _sse_of(t, y[stuck], n, K, ridge) < old
        theta[stuck[better]] = t[better]
    amp, mu, width = theta[:, :K], theta[:, K:2 * K], theta[:, 2 * K:].exp()
    recon = (gaussian_basis(n, mu, width) @ amp[:, :, None])[:, :, 0]
    return amp.cpu().numpy(), mu.cpu().numpy(), width.cpu().numpy(), recon.cpu().numpy()


def _with_amplitudes(y, mu, log_s, n, ridge):
    amp = _solve_amplitudes(gaussian_basis(n, mu, log_s.exp()), y, max(ridge, 1e-6) * n)
    return torch.cat([amp, mu, log_s], dim=1)


def _sse_of(theta, y, n, K, ridge):
    g = gaussian_basis(n, theta[:, K:2 * K], theta[:, 2 * K:].exp())
    return _objective(g, theta, y, n, K, ridge)


def _objective(g, theta, y, n, K, ridge):
    """Squared error plus the amplitude penalty ridge·n·‖A‖² (scale-free: both terms scale with y²)."""
    fit = (g @ theta[:, :K, None])[:, :, 0]
    return (fit - y).pow(2).sum(dim=1) + ridge * n * theta[:, :K].pow(2).sum(dim=1)


def _lm(y: torch.Tensor, theta: torch.Tensor, n: int, K: int, steps: int, ridge: float) -> torch.Tensor:
    """Levenberg-Marquardt iterations, every row with its own damping."""
    R = y.shape[0]
    g = gaussian_basis(n, theta[:, K:2 * K], theta[:, 2 * K:].exp())
    sse = _objective(g, theta, y, n, K, ridge)
    damping = torch.full((R, 1, 1), 1e-2, dtype=y.dtype, device=y.device)
    eye = torch.eye(3 * K, dtype=y.dtype, device=y.device)
    for _ in range(steps):
        jac, resid = _jacobian(theta, g, y, n, K)
        jtj = jac.transpose(1, 2) @ jac
        jtr = jac.transpose(1, 2) @ resid[:, :, None]
        # the amplitude penalty as extra residual rows √(ridge·n)·A
        jtj[:, :K, :K] += ridge * n * eye[:K, :K]
        jtr[:, :K, 0] -= ridge * n * theta[:, :K]
        diag = torch.diagonal(jtj, dim1=1, dim2=2)[:, :, None] * eye + 1e-9 * eye
        delta = torch.linalg.solve(jtj + damping * diag, jtr)[:, :, 0]
        candidate = _clamped(theta + delta, n, K)
        g_new = gaussian_basis(n, candidate[:, K:2 * K], candidate[:, 2 * K:].exp())
        new_sse = _objective(g_new, candidate, y, n, K, ridge)
        better = new_sse < sse
        theta = torch.where(better[:, None], candidate, theta)
        g = torch.where(better[:, None, None], g_new, g)
        sse = torch.where(better, new_sse, sse)
        damping = torch.where(better[:, None, None], damping / 3, damping * 4).clamp(1e-7, 1e7)
    return theta


def _clamped(theta: torch.Tensor, n: int, K: int) -> torch.Tensor:
    theta = theta.clone()
    theta[:, K:2 * K].clamp_(-0.1 * n, 1.1 * n)  # a centre far outside the row explains nothing
    theta[:, 2 * K:].clamp_(0.0, float(np.log(4 * n)))  # σ ≥ 1 column
    return theta


def _jacobian(theta: torch.Tensor, g: torch.Tensor, y: torch.Tensor, n: int, K: int):
    """Jacobian (R, n, 3K) of the model at theta, given its basis g (R, n, K), and the residual."""
    amp, mu, sigma = theta[:, :K], theta[:, K:2 * K], theta[:, 2 * K:].exp()
    j = torch.arange(n, dtype=theta.dtype, device=theta.device)[None, :, None]
    z = (j - mu[:, None, :]) / sigma[:, None, :]
    ag = amp[:, None, :] * g
    jac = torch.cat([g, ag * z / sigma[:, None, :], ag * z * z], dim=2)  # d/dA, d/dμ, d/dlogσ
    resid = y - (g @ amp[:, :, None])[:, :, 0]
    return jac, resid


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


class HarmonicLinear(torch.nn.Module):
    """A linear layer whose (out × in) weight is ``Σ_k A exp(−(j−μ)²/(2σ²))`` per output row."""

    def __init__(self, amplitude, centre, width, in_features: int, bias=None):
        super().__init__()
        as_param = lambda x: torch.nn.Parameter(torch.as_tensor(np.asarray(x), dtype=torch.float32))  # noqa: E731
        self.amplitude, self.centre = as_param(amplitude), as_param(centre)
        self.log_width = torch.nn.Parameter(torch.as_tensor(np.log(np.asarray(width)), dtype=torch.float32))
        self.in_features = in_features
        self.bias = None if bias is None else as_param(bias)

    @property
    def weight(self) -> torch.Tensor:
        basis = gaussian_basis(self.in_features, self.centre, self.log_width.exp())
        return (basis @ self.amplitude[:, :, None])[:, :, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


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
