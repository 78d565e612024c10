"""Compiled loops of the spilled engine (:mod:`.mapreduce`): spill keys from a CSR, k-way merge of sorted runs.

numba, ``nogil``, ``cache=True``; every output buffer comes from the caller.
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


@njit(**_JIT)
def merge_runs(keys, counts, run_starts, run_minis, mini_rows, n_vocab, out_cols, out_counts, row_nnz):
    """Merge sorted runs of spilled entries into one sorted, summed CSR piece; returns its entries.

    Run ``i`` is ``keys/counts[run_starts[i]:run_starts[i + 1]]``; ``run_minis[i, m]`` is
    where its mini-block ``m`` starts (relative to the run, ``m = 0 .. n_minis``); a key
    is local to its mini-block (``(row % mini_rows)·V + column``), so the merge key is
    ``m·mini_rows·V + key``, ascending within a run. A binary heap over the runs'
    current keys (the runs are already sorted: one comparison per level per entry,
    no re-sort). Writes columns and summed counts (uint64, checked by the caller)
    and the entries per row (``row_nnz``, rows of the block, zero on entry).
    """
    P = run_starts.size - 1
    n_minis = run_minis.shape[1] - 1
    span = np.uint64(mini_rows) * np.uint64(n_vocab)
    V = np.uint64(n_vocab)
    pos = np.empty(P, np.int64)
    mini = np.zeros(P, np.int64)
    cur = np.empty(P, np.uint64)
    heap = np.empty(P, np.int64)
    size = 0
    for i in range(P):
        pos[i] = run_starts[i]
        if pos[i] < run_starts[i + 1]:
            while mini[i] < n_minis and pos[i] - run_starts[i] >= run_minis[i, mini[i] + 1]:
                mini[i] += 1
            cur[i] = np.uint64(mini[i]) * span + np.uint64(keys[pos[i]])
            # sift up
            heap[size] = i
            c = size
            size += 1
            while c > 0:
                parent = (c - 1) >> 1
                if cur[heap[parent]] <= cur[heap[c]]:
                    break
                heap[parent], heap[c] = heap[c], heap[parent]
                c = parent
    n = -1
    last = np.uint64(0)
    while size > 0:
        i = heap[0]
        key = cur[i]
        if n >= 0 and key == last:
            out_counts[n] += counts[pos[i]]
        else:
            n += 1
            last = key
            out_cols[n] = key % V
            out_counts[n] = counts[pos[i]]
            row_nnz[np.int64(key // V)] += 1
        pos[i] += 1
        if pos[i] < run_starts[i + 1]:
            while mini[i] < n_minis and pos[i] - run_starts[i] >= run_minis[i, mini[i] + 1]:
                mini[i] += 1
            cur[i] = np.uint64(mini[i]) * span + np.uint64(keys[pos[i]])
        else:
            size -= 1
            heap[0] = heap[size]
        # sift down
        c = 0
        while True:
            left = 2 * c + 1
            if left >= size:
                break
            child = left
            if left + 1 < size and cur[heap[left + 1]] < cur[heap[left]]:
                child = left + 1
            if cur[heap[c]] <= cur[heap[child]]:
                break
            heap[c], heap[child] = heap[child], heap[c]
            c = child
    return n + 1
