"""Compiled loops of the all-lags kernel (numba, ``nogil``, ``cache=True``): see :mod:`.fused`.

The tail is counted in one pass over the tail tokens for a group of lags at once:
tail positions come grouped by token id (:func:`.loops.separated_stream`), so for
each tail id ``r`` the window ``stream[t - L .. t + L]`` around each occurrence
``t`` gives, for every lag ``k`` of the group, the columns of row ``r``
(``stream[t + k]``) and the head rows that have ``r`` as a column
(``code[t - k] < H``). Row ``r``'s columns are reduced through a dense
accumulator per lag and sorted; the head-row entries come out in ascending ``r``
for free. No pair is ever written to a partition buffer.

The head (both ranks < H) keeps one streaming pass per lag over the 2-byte codes
into a dense table: fusing all lags into one pass over the stream measured
slower (10 lags, H = 1024: 2.0 CPU-s fused vs 0.95 CPU-s for 10 passes; H = 512:
1.08 vs 0.76; the (H+1)²·L table falls out of cache).

Scratch comes in from the caller (allocated once per thread, reused across
blocks and lags); a block returns where it stopped when its output buffers are
full, so the caller copies out the compact result and resumes.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .loops import _insertion_sort, _radix_sort, merge_head_row

_JIT = dict(nogil=True, cache=True, boundscheck=False)


@njit(**_JIT)
def head_table(code, lag, table):
    """``table[a·(H+1) + b] += 1`` for every pair ``(code[i], code[i + lag])``; row and column H cleared."""
    H1 = np.int64(np.sqrt(table.size) + 0.5)
    H = H1 - 1
    m = code.size
    for i in range(m - lag):
        table[np.int64(code[i]) * H1 + code[i + lag]] += 1
    for c in range(H1):  # pairs with a tail token or a separator: counted by tail_block
        table[H * H1 + c] = 0
        table[np.int64(c) * H1 + H] = 0


@njit(**_JIT)
def tail_block(stream, code, tail_pos, tail_start, r, r_end, k0, k1, acc, hacc, t_cols, t_counts, t_fill,
               h_rows, h_cols, h_counts, h_fill, row_len, mark, sort_tmp, digit_count):
    """Tail entries of lags ``k0 .. k1 - 1`` for tail ids ``r .. r_end - 1``; returns the id it stopped at.

    For lag ``k0 + j``: row ``r``'s sorted columns and counts are appended at
    ``t_cols/t_counts[j·cap + t_fill[j]]`` (``cap = t_cols.size // (k1 - k0)``) and its
    length stored in ``row_len[j·V + r]``; entries ``(head code a, column r, count)`` of
    the head rows are appended at ``h_rows/h_cols/h_counts[j·cap + h_fill[j]]``, in
    ascending ``r``. Stops before an id whose occurrences might not fit ``cap``.

    ``acc`` (uint32, g·(V+1)) and ``hacc`` (uint32, g·(H+1)) are dense accumulators,
    zero on entry and on return; ``mark`` (int64, 2g) holds where the current id's
    entries start. The branches on "first time this column" stay: a branchless
    append (always write, advance the fill by the comparison) measured 1.6x slower
    here (3.5 vs 2.2 CPU-s for 10 lags of the shared corpora x40, at load 11), as
    the fill counters then chain through memory on every pair; touching the window
    16 occurrences ahead (a software prefetch) changed nothing (2.15 vs 2.19).
    """
    V = row_len.size // (k1 - k0)
    g = k1 - k0
    H = hacc.size // g - 1
    V1 = acc.size // g
    H1 = H + 1
    cap = t_cols.size // g
    while r < r_end:
        lo, hi = tail_start[r], tail_start[r + 1]
        n = hi - lo
        if n == 0:
            r += 1
            continue
        for j in range(g):
            if t_fill[j] + n > cap or h_fill[j] + n > cap:
                return r
        for j in range(g):
            mark[j] = t_fill[j]
            mark[g + j] = h_fill[j]
        for p in range(lo, hi):
            t = np.int64(tail_pos[p])
            for j in range(g):
                k = k0 + j
                c = stream[t + k]  # every document is followed by L separators: t + k is in the stream
                if c != V:
                    x = j * V1 + c
                    if acc[x] == 0:
                        t_cols[j * cap + t_fill[j]] = c
                        t_fill[j] += 1
                    acc[x] += 1
                if t >= k:
                    a = code[t - k]
                    if a < H:
                        y = j * H1 + a
                        if hacc[y] == 0:
                            h_rows[j * cap + h_fill[j]] = a
                            h_fill[j] += 1
                        hacc[y] += 1
        for j in range(g):
            start, stop = j * cap + mark[j], j * cap + t_fill[j]
            if stop - start <= 32:
                _insertion_sort(t_cols, start, stop)
            else:
                lo_col, hi_col = V, 0
                for i in range(start, stop):
                    lo_col = min(lo_col, t_cols[i])
                    hi_col = max(hi_col, t_cols[i])
                _radix_sort(t_cols, start, stop, lo_col, hi_col, sort_tmp, digit_count)
            base = j * V1
            for i in range(start, stop):
                x = base + t_cols[i]
                t_counts[i] = acc[x]
                acc[x] = 0
            row_len[j * V + r] = stop - start
            base = j * H1
            for i in range(j * cap + mark[g + j], j * cap + h_fill[j]):
                y = base + h_rows[i]
                h_cols[i] = r
                h_counts[i] = hacc[y]
                hacc[y] = 0
        r += 1
    return r


@njit(**_JIT)
def lag_csr_from_parts(table, head_ids, head_code, row_len, t_cols, t_counts, h_rows, h_cols, h_counts):
    """CSR ``(indptr int64, indices int32, counts uint32)`` of one lag from its head table and tail entries.

    ``row_len`` (V), ``t_cols``/``t_counts``: tail rows' entries in ascending row;
    ``h_rows`` (head codes)/``h_cols``/``h_counts``: head rows' tail entries in
    ascending column. The table is zeroed as it is read.
    """
    V = head_code.size - 1
    H = head_ids.size
    H1 = H + 1
    n_h = h_rows.size
    h_start = np.zeros(H + 2, np.int64)
    for i in range(n_h):
        h_start[h_rows[i] + 2] += 1
    for a in range(2, H + 2):
        h_start[a] += h_start[a - 1]
    sorted_cols = np.empty(n_h, np.int32)
    sorted_counts = np.empty(n_h, np.uint32)
    for i in range(n_h):  # stable by head code: each head row's columns stay ascending
        a = h_rows[i] + 1
        sorted_cols[h_start[a]] = h_cols[i]
        sorted_counts[h_start[a]] = h_counts[i]
        h_start[a] += 1
    indptr = np.zeros(V + 1, np.int64)
    for r in range(V):
        hc = head_code[r]
        if hc < H:
            n = h_start[hc + 1] - h_start[hc]
            base = np.int64(hc) * H1
            for c in range(H):
                n += table[base + c] != 0
        else:
            n = row_len[r]
        indptr[r + 1] = indptr[r] + n
    nnz = indptr[V]
    indices = np.empty(nnz, np.int32)
    counts = np.empty(nnz, np.uint32)
    tail_at = 0
    for r in range(V):
        at = indptr[r]
        hc = head_code[r]
        if hc >= H:
            for i in range(tail_at, tail_at + row_len[r]):
                indices[at] = t_cols[i]
                counts[at] = t_counts[i]
                at += 1
            tail_at += row_len[r]
            continue
        j, hi = h_start[hc], h_start[hc + 1]
        at = merge_head_row(table, np.int64(hc) * H1, H, head_ids, sorted_cols, sorted_counts, j, hi, indices, counts,
                            at)
    return indptr, indices, counts
