"""Count-based baselines: a unigram and a Witten–Bell bigram from the training-only counts.

Every ct_vs_random report prints these beside the trained arms (issue 18): a
trained model that ends above the smoothed bigram has not yet learned what one
pass of counting gives. Both models are built from the same count artifact the
arms seed from (training documents only), in the model's compact vocabulary
(tokenizer ids outside it are merged into ``<unk>``, as the model sees them), and
scored on exactly the evaluation windows of :func:`ctstore.sft.eval.validation_windows`.

* unigram: ``P(w) = (u(w) + 1) / (N + V)`` (add-one, so ``<unk>`` and ids never
  seen in training keep a probability);
* Witten–Bell bigram (Witten & Bell 1991; Chen & Goodman 1998 §2.5):
  ``P(w|v) = (c(v,w) + T(v)·P_uni(w)) / (c(v) + T(v))`` with ``c(v) = Σ_w c(v,w)``
  the lag-1 count of v as a left context and ``T(v)`` the number of distinct
  successors; a context never seen gets ``P_uni``.

The dense log-conditional matrix (:func:`log_conditionals`) is also the target
that ``seed --init bigram`` factorises.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

__all__ = ["CompactCounts", "compact_counts", "unigram_probs", "witten_bell", "log_conditionals",
           "window_pairs", "perplexity_of", "count_baselines"]


class CompactCounts:
    """Unigram (V,) and lag-1 pair counts (V × V CSR, row = left token) in a model's compact vocabulary."""

    def __init__(self, unigram: np.ndarray, pairs: sp.csr_matrix):
        self.unigram = np.asarray(unigram, np.float64)
        self.pairs = sp.csr_matrix(pairs, dtype=np.float64)

    @property
    def V(self) -> int:
        return self.unigram.size


def compact_counts(unigram: np.ndarray, lag1: sp.csr_matrix, vocab_map: np.ndarray | None) -> CompactCounts:
    """Map tokenizer-id counts to model ids (``vocab_map``: tokenizer id → model id; None: identity)."""
    if vocab_map is None:
        return CompactCounts(unigram, lag1)
    V_tok, V = len(vocab_map), int(vocab_map.max()) + 1
    P = sp.csr_matrix((np.ones(V_tok), (np.arange(V_tok), vocab_map)), shape=(V_tok, V))
    n = min(V_tok, lag1.shape[0])
    X = sp.csr_matrix(lag1, dtype=np.float64)[:n, :n]
    Pn = P[:n]
    return CompactCounts(np.bincount(vocab_map[: len(unigram)], weights=np.asarray(unigram, np.float64),
                                     minlength=V), (Pn.T @ X @ Pn).tocsr())


def unigram_probs(c: CompactCounts) -> np.ndarray:
    """Add-one unigram probabilities."""
    return (c.unigram + 1.0) / (c.unigram.sum() + c.V)


def witten_bell(c: CompactCounts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(context_total c(v), distinct successors T(v), P_uni)`` of the Witten–Bell bigram."""
    pairs = c.pairs
    total = np.asarray(pairs.sum(axis=1)).ravel()
    types = np.diff(pairs.indptr).astype(np.float64)  # CSR rows hold only nonzero counts after sum_duplicates
    return total, types, unigram_probs(c)


def _pair_probs(c: CompactCounts, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    total, types, p_uni = witten_bell(c)
    pairs = c.pairs.copy()
    pairs.sum_duplicates()
    counts = np.asarray(pairs[v, w]).ravel()
    denom = total[v] + types[v]
    seen = denom > 0
    out = p_uni[w].copy()
    out[seen] = (counts[seen] + types[v][seen] * p_uni[w][seen]) / denom[seen]
    return out


def log_conditionals(c: CompactCounts, rows: np.ndarray | None = None) -> np.ndarray:
    """Dense ``log P_WB(w | v)`` for the context rows ``rows`` (default all), shape (len(rows), V)."""
    total, types, p_uni = witten_bell(c)
    rows = np.arange(c.V) if rows is None else np.asarray(rows)
    dense = c.pairs[rows].toarray()
    denom = total[rows] + types[rows]
    seen = denom > 0
    out = np.tile(p_uni, (len(rows), 1))
    out[seen] = (dense[seen] + types[rows][seen, None] * p_uni[None, :]) / denom[seen, None]
    return np.log(out)


def window_pairs(data: np.ndarray, windows: list[tuple[int, int]], vocab_map: np.ndarray | None):
    """``(context, target)`` model ids of every prediction the windows make (the model's own pairs)."""
    ctx, tgt = [], []
    for s, n in windows:
        chunk = np.asarray(data[s: s + n + 1], dtype=np.int64)
        if vocab_map is not None:
            chunk = vocab_map[chunk]
        ctx.append(chunk[:-1])
        tgt.append(chunk[1:])
    return np.concatenate(ctx), np.concatenate(tgt)


def perplexity_of(log_probs: np.ndarray) -> dict:
    loss = float(-np.mean(log_probs))
    return {"loss": loss, "ppl": float(math.exp(min(loss, 50))), "tokens": int(log_probs.size)}


def count_baselines(c: CompactCounts, data: np.ndarray, windows: list[tuple[int, int]],
                    vocab_map: np.ndarray | None) -> dict:
    """``{"unigram": {loss, ppl, tokens}, "bigram_wb": {...}}`` on the evaluation windows."""
    v, w = window_pairs(data, windows, vocab_map)
    return {"unigram": perplexity_of(np.log(unigram_probs(c)[w])),
            "bigram_wb": perplexity_of(np.log(_pair_probs(c, v, w)))}
