"""Planning of stage ``k0``, no I/O: parameters, V_eff and lags, and the chosen method's memory plan.

``plan_k0`` picks the active vocabulary (V_eff, the most frequent tokens) and
checks the parameters against the store; :func:`plan_memory` asks the method
for its projected memory per task and in the client (:mod:`ctstore.embed.budget`)
and refuses a plan that ``--memory`` cannot hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CtstoreError, one_line
from ..stage import Params, param
from ..units import NON_NEGATIVE, POSITIVE, number_flag, parse_count, text_flag
from . import circulant, fft2, hierarchical, sparse
from .blocks import lag_weights
from .budget import MemoryPlan, output_bytes

__all__ = ["K0Params", "K0Plan", "plan_k0", "plan_memory", "band_weights", "v_eff_limit", "KERNELS", "SOLVERS"]

KERNELS = ("circulant", "none", "ppmi")
SOLVERS = ("auto", "svds", "rsvd")


def _weighting(text: str) -> str:
    """``--weighting``: uniform, inverse-distance or comma-separated finite numbers (checked at parse time)."""
    import argparse
    import math

    if not isinstance(text, str):
        raise argparse.ArgumentTypeError(f"must be uniform, inverse-distance or comma-separated finite numbers "
                                         f"in a string, not {one_line(repr(text))}")
    if text in ("uniform", "inverse-distance"):
        return text
    try:
        weights = [float(x) for x in text.split(",")]
    except ValueError:
        weights = None
    if not weights or not all(math.isfinite(w) for w in weights):
        raise argparse.ArgumentTypeError(f"must be uniform, inverse-distance or comma-separated finite numbers, "
                                         f"not {one_line(repr(text))}")
    return text


def _kernel(text: str) -> str:
    """``--kernel``: circulant, none, ppmi or a ``.npy`` file."""
    import argparse

    if not isinstance(text, str) or (text not in KERNELS and not text.endswith(".npy")):
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(KERNELS)} or a .npy file, "
                                         f"not {one_line(repr(text))}")
    return text


@dataclass(frozen=True)
class K0Params(Params):
    dim: int = param(128, "embedding dimension d", short="-d", parse=POSITIVE)
    lags: int | None = param(None, "use lags 1..L (default: all in the store)", parse=POSITIVE)
    lag_from: int = param(1, "first lag of the band (a band, as crystallize uses per layer)", parse=POSITIVE)
    weighting: str = param("uniform", "uniform, inverse-distance, or one comma-separated weight per lag",
                           parse=_weighting)
    symmetric: bool = param(False, "add the transpose (symmetric window)")
    v_eff: int | str = param("auto", "active vocabulary: N or auto (from the memory budget)",
                             parse=text_flag(parse_count, "auto or a count of at least 2", minimum=2,
                                             allowed=("auto",), parsed=True))
    transform: str = param("log1p", "log1p or ppmi", choices=("log1p", "ppmi"))
    ppmi_alpha: float = param(1.0, "context smoothing (0.75 is common)",
                              parse=number_flag(float, 0, what="a finite number >= 0"))
    kernel: str = param("circulant", "circulant (K0), none (SVD of X), ppmi, or a .npy kernel", parse=_kernel)
    method: str = param("exact", "exact or fft2", choices=("exact", "fft2"))
    hierarchical: bool = param(False, "two-level K0, memory O(V) (Paper 113 §4.2)")
    oversample: int | None = param(None, "randomized SVD oversampling (default max(64, d))", parse=NON_NEGATIVE)
    power_iters: int = param(5, "randomized SVD power iterations", parse=NON_NEGATIVE)
    seed: int = param(0, "random seed", parse=NON_NEGATIVE)
    solver: str = param("auto", "SVD of --kernel none/ppmi: svds (Lanczos, operator in memory, if it fits --memory), "
                        "rsvd (randomized, out of core) or auto (rsvd, measured faster)", choices=SOLVERS)

    def __post_init__(self):
        super().__post_init__()  # each field (parse=, choices=); below, the checks across fields
        if self.kernel == "ppmi" and self.transform != "ppmi":
            object.__setattr__(self, "transform", "ppmi")
        if self.kernel.endswith(".npy") and self.method != "fft2":
            raise CtstoreError("a kernel file needs --method fft2 (the exact identity is for circulant k0)")
        if self.hierarchical and (self.kernel != "circulant" or self.method != "exact"):
            raise CtstoreError("--hierarchical works with --kernel circulant --method exact")
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


def plan_memory(params: K0Params, n: int, n_vocab: int, memory, scheduler, *, solver: str | None = None,
                nnz: int = 0, max_row_entries: int = 1) -> MemoryPlan:
    """The chosen method's memory plan (per task and client), refused at once if ``--memory`` cannot hold it.

    ``nnz`` bounds the operator's non-zeros (svds and fft2 need it);
    ``max_row_entries`` is the largest operator row (a block holds at least one).
    """
    fit_args = dict(max_row_entries=max_row_entries, block_factor=2 if params.symmetric else 1,
                    output=output_bytes(n_vocab, n, params.dim), shared=9 * n_vocab)
    if params.hierarchical:
        return hierarchical.plan(n, params.dim, memory, scheduler, **fit_args)
    if params.method == "fft2":
        return fft2.plan(n, nnz, params, memory, scheduler, **fit_args)
    if params.kernel == "circulant":
        return circulant.plan(n, params.dim, memory, scheduler, **fit_args)
    return sparse.plan(solver or "rsvd", nnz, n, params, memory, scheduler, **fit_args)


