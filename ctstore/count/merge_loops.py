"""Compiled loops of the spilled engine (:mod:`.mapreduce`): packed spill entries from a CSR, merge of the runs.

numba, ``nogil``, ``cache=True``; every output buffer comes from the caller (merge_runs allocates its
accumulator and bitmap: 1 MB at V = 131,072).
"""

from __future__ import annotations

import numpy as np
from numba import njit
# tzcnt, the index of a word's lowest set bit, as one instruction: numba's own intrinsic (the de Bruijn
# multiply and table lookup it replaced took 14.0 vs 11.5 ns per entry of merge_runs on synthetic spills)
from numba.cpython.unsafe.numbers import trailing_zeros as _lowest_bit

_JIT = dict(nogil=True, cache=True, boundscheck=False)


def key_bits(n_vocab: int, mini_rows: int = 1) -> int:
    """Bits of a spilled key ``(row % mini_rows)·V + column`` (a reduce piece's: ``mini_rows`` 1, the
    column); the rest of its uint32 holds the count."""
    return max(1, (mini_rows * n_vocab - 1).bit_length())


def overflow_capacity(entries: int, n_vocab: int, mini_rows: int) -> int:
    """Room for the entries of a reduce piece whose count does not fit beside its column: ``entries`` spilled
    ones carry at most ``cin`` each (their field), an overflowing sum is at least ``cout`` (the piece's), so
    at most ``entries · cin / cout`` overflow (one in ~256 at V = 131,072 and 256 rows per mini-block)."""
    cin = (1 << (32 - key_bits(n_vocab, mini_rows))) - 1
    cout = (1 << (32 - key_bits(n_vocab))) - 1
    return entries * cin // cout + 1


@njit(**_JIT)
def entries_for(count, cmax):
    """Entries a count takes in a field that holds at most ``cmax``: ``ceil(count / cmax)`` (no division for
    the common count that fits)."""
    return 1 if count <= cmax else (np.int64(count) + cmax - 1) // cmax


@njit(**_JIT)
def pack_entry(out, at, key, count, cmax, shift):
    """Write ``count`` for ``key`` from ``out[at]`` as ``count << shift | key`` entries of at most ``cmax``
    each (uint32); returns the next free slot."""
    c = np.uint32(count)
    while c > cmax:
        out[at] = (cmax << shift) | key
        at += 1
        c -= cmax
    out[at] = (c << shift) | key
    return at + 1


@njit(**_JIT)
def spill_index(indptr, counts, mini_rows, count_bits, index):
    """Where each mini-block of ``mini_rows`` rows starts among the packed entries of a CSR (``index``,
    n_minis + 1); returns the entries. A count above ``2^count_bits - 1`` takes several entries (see
    :func:`spill_pack`)."""
    cmax = np.uint32((1 << count_bits) - 1)
    n = 0
    index[0] = 0
    for r in range(indptr.size - 1):
        for e in range(indptr[r], indptr[r + 1]):
            n += entries_for(counts[e], cmax)
        if (r + 1) % mini_rows == 0 or r + 1 == indptr.size - 1:
            index[(r + mini_rows) // mini_rows] = n
    return n


@njit(**_JIT)
def spill_pack(indptr, indices, counts, n_vocab, mini_rows, count_bits, out):
    """Pack every entry of a CSR into one uint32: ``count << key_bits | (row % mini_rows)·V + column``.

    A count above ``cmax = 2^count_bits - 1`` is written as several entries of the same
    key (``cmax``, ..., the rest): the reduce sums entries of a key whatever their number,
    so no entry needs a wider field. That costs one entry per ``cmax`` of a pair's count
    (at V = 131,072, 7 bits: a pair seen 1,000 times in a chunk takes 8 entries), and halves
    the spill of synthetic text, where nearly every pair is seen once, against a separate
    uint32 count. Returns the entries written (``spill_index``'s total)."""
    V = np.uint32(n_vocab)
    cmax = np.uint32((1 << count_bits) - 1)
    shift = np.uint32(32 - count_bits)
    n = 0
    for r in range(indptr.size - 1):
        base = np.uint32(r % mini_rows) * V
        for e in range(indptr[r], indptr[r + 1]):
            n = pack_entry(out, n, base + np.uint32(indices[e]), counts[e], cmax, shift)
    return n


@njit(**_JIT)
def merge_runs(packed, run_starts, run_minis, mini_rows, n_vocab, key_bits, out_bits, out, over_pos, over_count,
               row_nnz):
    """Merge runs of spilled entries into one sorted, summed CSR piece, packed; returns ``(entries, overflows)``.

    Run ``i`` is ``packed[run_starts[i]:run_starts[i + 1]]`` (entries of :func:`spill_pack`:
    the count above ``key_bits``, the key below); ``run_minis[i, m]`` is
    where its mini-block ``m`` starts (relative to the run, ``m = 0 .. n_minis``); a key
    is local to its mini-block (``(row % mini_rows)·V + column``), its rows ascending within a
    run (columns within a row in any order, a key possibly repeated), so each run lists a row's
    entries together. Row by row, every run's entries
    of the row are added into a dense accumulator of V counts, their columns marked in
    a bitmap of V bits (16 KB at V = 131,072, in L1); the row is then read back in
    column order from the bitmap's set bits (a summary bitmap, one bit per word of
    it, skips the empty words), which clears both. Per entry that is one
    add and one bit set, whatever the number of runs: a heap over 95 runs took
    ~7 comparisons per entry.

    Writes each entry as one uint32, ``count << out_bits | column`` (half the bytes of a
    column and a count: the piece is written to scratch and read back by assemble); a count
    of ``cmax = 2^(32 - out_bits) - 1`` or more is written as ``cmax`` and listed in
    ``over_pos`` (its place in ``out``) and ``over_count`` (see :func:`overflow_capacity`).
    Fills ``row_nnz`` (entries per row of the block, zero on entry). Returns ``(-1, 0)``
    instead when a count exceeds 2^32 - 1 (what a count store holds).
    """
    P = run_starts.size - 1
    n_minis = run_minis.shape[1] - 1
    V = np.uint64(n_vocab)
    acc = np.zeros(n_vocab, np.uint32)  # 512 KB at V = 131,072: stays in L2 (uint64 took 1 MB, all of it)
    wrapped = False
    bits = np.zeros((n_vocab + 63) // 64, np.uint64)
    summary = np.zeros((bits.size + 63) // 64, np.uint64)  # bit w: bits[w] is not zero
    pos = np.empty(P, np.int64)
    one, six, low6 = np.uint64(1), np.uint64(6), np.uint64(63)
    kmask = np.uint32((1 << key_bits) - 1)
    kshift = np.uint32(key_bits)
    oshift = np.uint32(out_bits)
    cmax = np.uint32((1 << (32 - out_bits)) - 1)
    n = 0
    k = 0
    for m in range(n_minis):
        for i in range(P):
            pos[i] = run_starts[i] + run_minis[i, m]
        for lr in range(mini_rows):
            base = np.uint64(lr) * V
            limit = base + V
            for i in range(P):
                p = pos[i]
                end = run_starts[i] + run_minis[i, m + 1]
                while p < end and np.uint64(packed[p] & kmask) < limit:
                    x = packed[p]
                    col = np.uint64(x & kmask) - base
                    before = acc[col]
                    acc[col] = before + (x >> kshift)
                    wrapped |= acc[col] < before
                    w = col >> six
                    summary[w >> six] |= one << (w & low6)  # no branch on bits[w]: 11.8 -> 9.7 ns per entry
                    bits[w] |= one << (col & low6)
                    p += 1
                pos[i] = p
            start = n
            for s in range(summary.size):
                sword = summary[s]
                while sword:
                    w = s * 64 + np.int64(_lowest_bit(sword))
                    word = bits[w]
                    while word:
                        col = w * 64 + np.int64(_lowest_bit(word))
                        c = acc[col]
                        if c >= cmax:
                            over_pos[k] = n
                            over_count[k] = c
                            k += 1
                            c = cmax
                        out[n] = (c << oshift) | np.uint32(col)
                        acc[col] = 0
                        n += 1
                        word &= word - one  # clear the lowest set bit
                    bits[w] = 0
                    sword &= sword - one
                summary[s] = 0
            row_nnz[m * mini_rows + lr] = n - start
    return (-1, 0) if wrapped else (n, k)
