"""Compiled loops of the pair kernel (numba, ``nogil``): the parts of a count that touch every token.

Imported only when a count runs (``ctstore.count.kernel`` imports it lazily), so
commands that do not count never pay numba's import; ``cache=True`` keeps the
machine code between processes (first compile ~5 s after an install or an edit;
import and cached load ~0.5 CPU-s, measured at load 6).

Every function releases the GIL: the one-pass engine runs lags on two threads.
Scratch arrays come in from the caller (allocated once per thread and reused
across lags); only a lag's result (its CSR) is allocated here.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .merge_loops import entries_for, pack_entry

_JIT = dict(nogil=True, cache=True, boundscheck=False)
ROW_BITS = 9  # tail pairs are partitioned by row into buckets of 2**ROW_BITS rows
RADIX_BITS = 8  # digits of the radix sort of a row's distinct columns


@njit(**_JIT)
def unigram_counts(values, n_vocab):
    """``np.bincount(values, minlength=n_vocab)`` as uint64 without numpy's cast of the ids to intp."""
    out = np.zeros(n_vocab, np.uint64)
    for i in range(values.size):
        out[values[i]] += 1
    return out


@njit(**_JIT)
def separated_stream(values, offsets, lags, head_code, stream, code, tail_pos, cursor, tail_end, start):
    """Lay documents out from slot ``start`` with ``lags`` separator slots (id V) after each, in one pass.

    Fills ``stream`` (ids), ``code`` (``head_code[id]``: rank in the head, or H for a
    tail id and for the separator) and ``tail_pos`` (positions of tail tokens grouped
    by id, ascending within an id: ``cursor[id]`` is where the id's next position
    goes; the id's positions end before ``tail_end[id]``). Pieces of a corpus may be
    laid out concurrently, each from its own ``start`` and ``cursor``. Returns the
    slot after the last one written, or -1 when an id has more tail positions than
    ``tail_end`` leaves room for (nothing is written outside the arrays; the caller
    checks ``stream``'s room for the piece before the call).
    """
    sep = head_code.size - 1
    H = head_code[sep]
    at = start
    for d in range(offsets.size - 1):
        for i in range(offsets[d], offsets[d + 1]):
            t = values[i]
            c = head_code[t]
            stream[at] = t
            code[at] = c
            if c == H:
                p = cursor[t]
                if p >= tail_end[t]:
                    return -1
                tail_pos[p] = at
                cursor[t] = p + 1
            at += 1
        for _ in range(lags):
            stream[at] = sep
            code[at] = H
            at += 1
    return at


@njit(**_JIT)
def tail_positions_ascending(stream, code, H, sep, tail_pos):
    """Rewrite ``tail_pos`` as the ascending positions of tail tokens (code H, not the separator ``sep``)."""
    n = 0
    for i in range(stream.size):
        if code[i] == H and stream[i] != sep:
            tail_pos[n] = i
            n += 1


@njit(**_JIT)
def _insertion_sort(a, lo, hi):
    for i in range(lo + 1, hi):
        x = a[i]
        j = i - 1
        while j >= lo and a[j] > x:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = x


@njit(**_JIT)
def _radix_sort(a, lo, hi, lo_val, hi_val, tmp, count):
    """Sort ``a[lo:hi]`` (values in ``[lo_val, hi_val]``) in place: LSD radix on ``value - lo_val``,
    8 bits a pass, only as many passes as the span needs; ``tmp`` (≥ hi - lo) and ``count`` (≥ 256) are
    scratch. Distinct columns of a row, 33 to thousands of them: ~4 operations per element where
    numba's quicksort took ~3·log2(k) (it was most of a lag on synthetic V = 131,072 text)."""
    n = hi - lo
    span = hi_val - lo_val
    shift = 0
    src_is_a = True
    while True:
        count[:] = 0
        for i in range(n):
            v = (a[lo + i] if src_is_a else tmp[i]) - lo_val
            count[(v >> shift) & 255] += 1
        total = 0
        for d in range(256):
            c = count[d]
            count[d] = total
            total += c
        for i in range(n):
            x = a[lo + i] if src_is_a else tmp[i]
            d = ((x - lo_val) >> shift) & 255
            if src_is_a:
                tmp[count[d]] = x
            else:
                a[lo + count[d]] = x
            count[d] += 1
        src_is_a = not src_is_a
        shift += RADIX_BITS
        if (span >> shift) == 0:
            break
    if not src_is_a:  # the sorted values are in tmp
        for i in range(n):
            a[lo + i] = tmp[i]


@njit(**_JIT)
def merge_head_row(table, base, H, head_ids, cols, vals, j, hi, indices, counts, at):
    """Write a head row into CSR from ``at``: the non-zero cells of ``table[base:base + H]`` (columns
    ``head_ids``, ascending) merged with the sorted tail columns ``cols[j:hi]`` (counts ``vals``); the
    table cells read are zeroed for the next row. Returns the next free CSR slot."""
    c = 0
    while True:
        while c < H and table[base + c] == 0:
            c += 1
        if j >= hi and c >= H:
            break
        if j < hi and (c >= H or cols[j] < head_ids[c]):
            indices[at] = cols[j]
            counts[at] = vals[j]
            j += 1
        else:
            indices[at] = head_ids[c]
            counts[at] = table[base + c]
            table[base + c] = 0
            c += 1
        at += 1
    return at


@njit(**_JIT)
def append_head_row(table, base, H, head_ids, cols, vals, j, hi, indices, counts, at):
    """:func:`merge_head_row` without the merge: the table's non-zero cells (zeroed as read), then the tail
    columns ``cols[j:hi]`` as they come (the two sets are disjoint). Returns the next free CSR slot."""
    for c in range(H):
        x = table[base + c]
        if x:
            indices[at] = head_ids[c]
            counts[at] = x
            table[base + c] = 0
            at += 1
    for i in range(j, hi):
        indices[at] = cols[i]
        counts[at] = vals[i]
        at += 1
    return at


@njit(**_JIT)
def lag_csr(stream, code, tail_pos, head_ids, head_code, lag, table, bucket_start, local, row_start, row_len, acc,
            pairs, cols, sort_tmp, digit_count, sort_cols=True):
    """CSR ``(indptr int64, indices int32, counts uint32)`` of lag ``lag`` over V = ``head_code.size - 1`` rows.

    * head pairs (both ranks < H): one pass over ``code``, ``table[a·(H+1) + b] += 1``
      with no branch (row and column H collect pairs with a tail token or a separator
      and are cleared, never read). One pass per lag: fusing all lags into one pass
      over the stream measured 3x slower per lag here (L tables fall out of cache);
      the stream itself is 2 bytes per token;
    * tail pairs (at least one tail token; each found once from ``tail_pos``: the tail
      token on the left, or a head token on the left of a tail token) are partitioned
      by row into buckets of 512 rows (``pairs``, packed ``row << 32 | col``: a few
      hundred sequential write streams, where a scatter straight to V rows missed the
      cache on every pair and measured 3x slower); each bucket, in cache, is bucketed
      by row into ``cols`` and each row reduced with a dense accumulator over V
      (``acc``, Gustavson's sparse accumulator): its distinct columns go to the front
      of its range and only those are sorted (insertion sort up to 32, else LSD radix
      sort; or, when they are dense in their span, read off the accumulator in order),
      their counts go to ``pairs``;
    * each row's output merges its sorted tail columns with its head row of the table
      (head ids ascending, so already in column order); the table is zeroed as it is
      read, ready for the next lag.

    With ``sort_cols`` False, a row's columns are unique but in no particular order
    (the head row's cells first, then its tail columns as the accumulator met them):
    the map tasks of map/reduce skip the sort (a third of this kernel on synthetic
    V = 131,072 text: 0.64 → 0.44 s for 10 lags of 2.1M tokens), since the reduce's
    merge (:func:`.merge_loops.merge_runs`) reads every row back in column order anyway.

    Scratch (per thread, reused; see :class:`ctstore.count.kernel.HeadWork`): ``table``
    ((H+1)² uint32) and ``acc`` (uint32, V), zero on entry and on return;
    ``bucket_start`` (int64, V / 512 + 3), ``local`` (int64, 514), ``row_start``
    (int64, V), ``row_len`` (int32, V), ``pairs`` (uint64) and ``cols`` (int32), each
    at least the lag's tail pairs (≤ 2·len(tail_pos)), ``sort_tmp`` (int32, V) and
    ``digit_count`` (int64, 256) for the radix sort.
    """
    _lag_rows(stream, code, tail_pos, head_ids, head_code, lag, table, bucket_start, local, row_start, row_len,
              acc, pairs, cols, sort_tmp, digit_count, sort_cols)
    V = head_code.size - 1
    H = head_ids.size
    H1 = H + 1
    indptr = np.zeros(V + 1, np.int64)
    for r in range(V):
        n = row_len[r]
        hc = head_code[r]
        if hc < H:
            base = np.int64(hc) * H1
            for c in range(H):
                n += table[base + c] != 0
        indptr[r + 1] = indptr[r] + n
    nnz = indptr[V]
    indices = np.empty(nnz, np.int32)
    counts = np.empty(nnz, np.uint32)
    for r in range(V):
        at = indptr[r]
        j, hi = row_start[r], row_start[r] + row_len[r]
        hc = head_code[r]
        if hc >= H:
            for i in range(j, hi):
                indices[at] = cols[i]
                counts[at] = pairs[i]
                at += 1
            continue
        if sort_cols:
            at = merge_head_row(table, np.int64(hc) * H1, H, head_ids, cols, pairs, j, hi, indices, counts, at)
        else:
            at = append_head_row(table, np.int64(hc) * H1, H, head_ids, cols, pairs, j, hi, indices, counts, at)
    return indptr, indices, counts



@njit(**_JIT)
def _lag_rows(stream, code, tail_pos, head_ids, head_code, lag, table, bucket_start, local, row_start, row_len, acc,
              pairs, cols, sort_tmp, digit_count, sort_cols):
    """The counting of :func:`lag_csr`: the head pairs into ``table``; each row's distinct tail columns at
    ``cols[row_start[r]:row_start[r] + row_len[r]]``, their counts at the same places of ``pairs``."""
    V = head_code.size - 1
    H = head_ids.size
    H1 = H + 1
    m = stream.size
    for i in range(m - lag):
        table[np.int64(code[i]) * H1 + code[i + lag]] += 1
    for c in range(H1):  # pairs with a tail token or a separator: counted from the tail below
        table[np.int64(H) * H1 + c] = 0
        table[np.int64(c) * H1 + H] = 0
    # tail pairs: count per bucket into bucket_start[b + 2], prefix, partition through bucket_start[b + 1]
    n_buckets = (V >> ROW_BITS) + 1
    bucket_start[:] = 0
    for j in range(tail_pos.size):
        t = tail_pos[j]
        if t + lag < m and stream[t + lag] != V:
            bucket_start[(stream[t] >> ROW_BITS) + 2] += 1
        if t >= lag and code[t - lag] < H:
            bucket_start[(stream[t - lag] >> ROW_BITS) + 2] += 1
    for b in range(2, n_buckets + 2):
        bucket_start[b] += bucket_start[b - 1]
    for j in range(tail_pos.size):
        t = tail_pos[j]
        if t + lag < m and stream[t + lag] != V:
            r = stream[t]
            b = (r >> ROW_BITS) + 1
            pairs[bucket_start[b]] = (np.uint64(r) << np.uint64(32)) | np.uint64(stream[t + lag])
            bucket_start[b] += 1
        if t >= lag and code[t - lag] < H:
            r = stream[t - lag]
            b = (r >> ROW_BITS) + 1
            pairs[bucket_start[b]] = (np.uint64(r) << np.uint64(32)) | np.uint64(stream[t])
            bucket_start[b] += 1
    # each bucket: by row into cols (local offsets, same trick), then each row through the accumulator
    low = np.uint64(0xFFFFFFFF)
    for b in range(n_buckets):
        lo, hi = bucket_start[b], bucket_start[b + 1]
        r0 = b << ROW_BITS
        r1 = min(V, r0 + (1 << ROW_BITS))
        local[:] = 0
        for e in range(lo, hi):
            local[(pairs[e] >> np.uint64(32)) - r0 + 2] += 1
        for i in range(2, r1 - r0 + 2):
            local[i] += local[i - 1]
        for e in range(lo, hi):
            i = (pairs[e] >> np.uint64(32)) - r0 + 1
            cols[lo + local[i]] = pairs[e] & low
            local[i] += 1
        for r in range(r0, r1):
            start, stop = lo + local[r - r0], lo + local[r - r0 + 1]
            k = start
            lo_col, hi_col = V, 0
            for j in range(start, stop):
                col = cols[j]
                if acc[col] == 0:
                    cols[k] = col  # k <= j: never overwrites a column still to be read
                    k += 1
                    lo_col = min(lo_col, col)
                    hi_col = max(hi_col, col)
                acc[col] += 1
            if not sort_cols:  # the map of map/reduce: its reduce puts every row in column order
                for j in range(start, k):
                    pairs[j] = acc[cols[j]]
                    acc[cols[j]] = 0
            elif (hi_col - lo_col) < 8 * (k - start):
                # many distinct columns in a narrow range: reading the accumulator in order beats sorting
                k = start
                for col in range(lo_col, hi_col + 1):
                    if acc[col]:
                        cols[k] = col
                        pairs[k] = acc[col]  # this bucket's packed pairs are all read: reuse for counts
                        acc[col] = 0
                        k += 1
            else:
                if k - start <= 32:
                    _insertion_sort(cols, start, k)
                else:
                    _radix_sort(cols, start, k, lo_col, hi_col, sort_tmp, digit_count)
                for j in range(start, k):
                    pairs[j] = acc[cols[j]]
                    acc[cols[j]] = 0
            row_start[r] = start
            row_len[r] = k - start


@njit(**_JIT)
def lag_spill(stream, code, tail_pos, head_ids, head_code, lag, table, bucket_start, local, row_start, row_len, acc,
              pairs, cols, sort_tmp, digit_count, mini_rows, count_bits, index):
    """One lag's entries packed as a map task spills them (see :func:`.merge_loops.spill_pack`), straight
    from the counting (:func:`_lag_rows`, columns unsorted) without a CSR in between: returns the packed
    uint32 entries, rows ascending (a head row's table cells, then its tail columns), and fills ``index``
    (where each mini-block of ``mini_rows`` rows starts, n_minis + 1). A count above ``2^count_bits - 1``
    takes several entries of its key."""
    _lag_rows(stream, code, tail_pos, head_ids, head_code, lag, table, bucket_start, local, row_start, row_len,
              acc, pairs, cols, sort_tmp, digit_count, False)
    V = head_code.size - 1
    H = head_ids.size
    H1 = H + 1
    ucmax = np.uint32((1 << count_bits) - 1)
    n = 0
    index[0] = 0
    for r in range(V):  # entries per mini-block, a large count split
        for j in range(row_start[r], row_start[r] + row_len[r]):
            n += entries_for(pairs[j], ucmax)
        hc = head_code[r]
        if hc < H:
            base = np.int64(hc) * H1
            for c in range(H):
                x = table[base + c]
                if x:
                    n += entries_for(x, ucmax)
        if (r + 1) % mini_rows == 0 or r + 1 == V:
            index[r // mini_rows + 1] = n
    out = np.empty(n, np.uint32)
    shift = np.uint32(32 - count_bits)
    at = 0
    for r in range(V):
        base_key = np.uint32(r % mini_rows) * np.uint32(V)
        hc = head_code[r]
        if hc < H:
            base = np.int64(hc) * H1
            for c in range(H):
                x = table[base + c]
                if x:
                    table[base + c] = 0
                    at = pack_entry(out, at, base_key + np.uint32(head_ids[c]), x, ucmax, shift)
        for j in range(row_start[r], row_start[r] + row_len[r]):
            at = pack_entry(out, at, base_key + np.uint32(cols[j]), pairs[j], ucmax, shift)
    return out
