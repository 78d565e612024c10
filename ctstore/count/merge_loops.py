"""Compiled loops of the spilled engine (:mod:`.mapreduce`): spill keys from a CSR, merge of sorted runs.

numba, ``nogil``, ``cache=True``; every output buffer comes from the caller (merge_runs allocates its
accumulator and bitmap: 1 MB at V = 131,072).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_JIT = dict(nogil=True, cache=True, boundscheck=False)


@njit(**_JIT)
def spill_keys(indptr, indices, n_vocab, mini_rows, out):
    """``out[e] = (row % mini_rows)·V + column`` for every entry of a CSR (uint32, < mini_rows·V ≤ 2^32)."""
    V = np.uint32(n_vocab)
    for r in range(indptr.size - 1):
        base = np.uint32(r % mini_rows) * V
        for e in range(indptr[r], indptr[r + 1]):
            out[e] = base + np.uint32(indices[e])


_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)  # 64-bit de Bruijn sequence: the index of a word's lowest set bit
_DEBRUIJN_INDEX = np.zeros(64, np.int64)
for _bit in range(64):
    _DEBRUIJN_INDEX[((1 << _bit) * 0x03F79D71B4CB0A89 % (1 << 64)) >> 58] = _bit


@njit(**_JIT)
def merge_runs(keys, counts, run_starts, run_minis, mini_rows, n_vocab, out_cols, out_counts, row_nnz):
    """Merge sorted runs of spilled entries into one sorted, summed CSR piece; returns its entries.

    Run ``i`` is ``keys/counts[run_starts[i]:run_starts[i + 1]]``; ``run_minis[i, m]`` is
    where its mini-block ``m`` starts (relative to the run, ``m = 0 .. n_minis``); a key
    is local to its mini-block (``(row % mini_rows)·V + column``), ascending within a
    run, so each run lists a row's entries together. Row by row, every run's entries
    of the row are added into a dense accumulator of V counts, their columns marked in
    a bitmap of V bits (16 KB at V = 131,072, in L1); the row is then read back in
    column order from the bitmap's set bits (a summary bitmap, one bit per word of
    it, skips the empty words), which clears both. Per entry that is one
    add and one bit set, whatever the number of runs: a heap over 95 runs took
    ~7 comparisons per entry. Writes columns and summed counts (uint64, checked by
    the caller) and the entries per row (``row_nnz``, rows of the block, zero on entry).
    """
    P = run_starts.size - 1
    n_minis = run_minis.shape[1] - 1
    V = np.uint64(n_vocab)
    acc = np.zeros(n_vocab, np.uint64)
    bits = np.zeros((n_vocab + 63) // 64, np.uint64)
    summary = np.zeros((bits.size + 63) // 64, np.uint64)  # bit w: bits[w] is not zero
    pos = np.empty(P, np.int64)
    one, six, low6 = np.uint64(1), np.uint64(6), np.uint64(63)
    n = 0
    for m in range(n_minis):
        for i in range(P):
            pos[i] = run_starts[i] + run_minis[i, m]
        for lr in range(mini_rows):
            base = np.uint64(lr) * V
            limit = base + V
            for i in range(P):
                p = pos[i]
                end = run_starts[i] + run_minis[i, m + 1]
                while p < end and np.uint64(keys[p]) < limit:
                    col = np.uint64(keys[p]) - base
                    acc[col] += np.uint64(counts[p])
                    w = col >> six
                    if bits[w] == 0:
                        summary[w >> six] |= one << (w & low6)
                    bits[w] |= one << (col & low6)
                    p += 1
                pos[i] = p
            start = n
            for s in range(summary.size):
                sword = summary[s]
                while sword:
                    slow = sword & (~sword + one)
                    w = s * 64 + _DEBRUIJN_INDEX[np.int64((slow * _DEBRUIJN) >> np.uint64(58))]
                    word = bits[w]
                    while word:
                        low = word & (~word + one)
                        col = w * 64 + _DEBRUIJN_INDEX[np.int64((low * _DEBRUIJN) >> np.uint64(58))]
                        out_cols[n] = col
                        out_counts[n] = acc[col]
                        acc[col] = 0
                        n += 1
                        word ^= low
                    bits[w] = 0
                    sword ^= slow
                summary[s] = 0
            row_nnz[m * mini_rows + lr] = n - start
    return n
