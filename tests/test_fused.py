"""The all-lags kernel (ctstore.count.fused) and the spill merge (merge_loops) against a naive reference.

The reference is a plain Python loop over each document (no numpy, no scipy, nothing shared with the
kernel): ``counts[(t[i], t[i + k])] += 1`` for every in-document pair. Inputs are small random token
streams with document boundaries, empty documents, documents shorter than L, and head sizes that put
the head boundary exactly between equally frequent ids.
"""

import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctstore.count import ChunkPairs, fused


def naive_lag(docs: list, lag: int) -> Counter:
    pairs = Counter()
    for doc in docs:
        for i in range(len(doc) - lag):
            pairs[(int(doc[i]), int(doc[i + lag]))] += 1
    return pairs


def csr_as_counter(indptr, indices, counts) -> Counter:
    out = Counter()
    for row in range(indptr.size - 1):
        cols = indices[indptr[row]:indptr[row + 1]]
        assert np.all(np.diff(cols) > 0), f"row {row}: columns not sorted and unique"
        for col, n in zip(cols, counts[indptr[row]:indptr[row + 1]]):
            assert n > 0
            out[(row, int(col))] = int(n)
    return out


def pairs_of(docs: list, V: int, lags: int, head) -> ChunkPairs:
    values = np.array([t for d in docs for t in d], np.uint32)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    return ChunkPairs(values, offsets, V, lags, head=head)


def check_all_lags(docs, V, lags, head, threads=1, allowance=None):
    pairs = pairs_of(docs, V, lags, head)
    got = dict(fused.count_all_lags(pairs, threads, allowance))
    assert sorted(got) == list(range(1, lags + 1))
    for lag in range(1, lags + 1):
        indptr, indices, counts = got[lag]
        assert indptr.dtype == np.int64 and indices.dtype == np.int32 and counts.dtype == np.uint32
        assert indptr.size == V + 1
        assert csr_as_counter(indptr, indices, counts) == naive_lag(docs, lag), f"lag {lag}, head {pairs.head}"
    return pairs, got


def random_docs(rng, V: int, n_docs: int, max_len: int) -> list:
    docs = [list(rng.zipf(1.3, size=int(rng.integers(0, max_len))).clip(max=V) - 1) for _ in range(n_docs)]
    return docs + [[], [V - 1], [0, V - 1]]  # an empty document, one shorter than any lag, both id edges


@pytest.mark.parametrize("head", [0, 1, 5, 40, 200, None])
@pytest.mark.parametrize("threads,allowance", [(1, None), (2, None), (2, 1)])
def test_all_lags_equal_naive_reference(head, threads, allowance):
    """allowance=1 forces one lag per group after a retry; threads=2 splits tail ids into ranges."""
    rng = np.random.default_rng(7 + (head or 0))
    check_all_lags(random_docs(rng, 200, 60, 40), 200, 7, head, threads, allowance)


def test_head_boundary_between_equally_frequent_ids():
    """Ids 0..5 occur equally often: a head of 3 splits a tie; every pair kind crosses the boundary."""
    docs = [[0, 1, 2, 3, 4, 5] * 3, [5, 4, 3, 2, 1, 0], [3, 2], [], [1], [2, 3, 2, 3, 9, 9, 8]]
    for head in (0, 2, 3, 4, 6, 10):
        pairs, _ = check_all_lags(docs, 10, 4, head)
        assert pairs.head == head


def test_tail_ids_split_over_many_blocks(monkeypatch):
    """A block of the smallest size (one tail id's occurrences) makes every id its own block."""
    monkeypatch.setattr(fused, "BLOCK_OCCURRENCES", 1)
    rng = np.random.default_rng(3)
    pairs, _ = check_all_lags(random_docs(rng, 300, 40, 30), 300, 5, 8)
    assert fused.block_capacity(pairs) == pairs.max_tail_count


def test_all_lags_equal_the_per_lag_kernel_on_many_ids():
    """V = 5000 with a Zipf stream: tail rows long enough for the radix sort; same arrays as ChunkPairs.lag."""
    rng = np.random.default_rng(11)
    docs = [list(rng.zipf(1.15, size=int(rng.integers(0, 3000))).clip(max=5000) - 1) for _ in range(40)]
    pairs = pairs_of(docs, 5000, 6, None)
    work = pairs.work()
    for lag, got in fused.count_all_lags(pairs, 2):
        want, _ = pairs.lag(lag, work)
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("head", [0, 3, None])
def test_unsorted_rows_hold_the_sorted_kernels_cells(head):
    """sort_cols=False (map tasks): same row lengths and, row by row, the same (column, count) cells as the
    sorted CSR, columns unique; on a Zipf stream of V = 5000 (rows long enough for the radix sort)."""
    rng = np.random.default_rng(5)
    docs = [list(rng.zipf(1.15, size=int(rng.integers(0, 3000))).clip(max=5000) - 1) for _ in range(30)]
    pairs = pairs_of(docs, 5000, 4, head)
    work = pairs.work()
    shuffled_rows = 0
    for lag in range(1, 5):
        (ip, ind, cnt), _ = pairs.lag(lag, work)
        (ip2, ind2, cnt2), _ = pairs.lag(lag, work, sort_cols=False)
        np.testing.assert_array_equal(ip, ip2)
        for r in np.flatnonzero(np.diff(ip)):
            a, b = slice(ip[r], ip[r + 1]), slice(ip2[r], ip2[r + 1])
            order = np.argsort(ind2[b], kind="stable")
            np.testing.assert_array_equal(ind2[b][order], ind[a])
            np.testing.assert_array_equal(cnt2[b][order], cnt[a])
            shuffled_rows += bool((order != np.arange(order.size)).any())
    assert shuffled_rows  # the comparison is not vacuous: some rows do come out of column order


@pytest.mark.parametrize("head", [0, 3, None])
def test_lag_spill_packs_the_kernels_cells(head):
    """ChunkPairs.lag_spill (the map's path: packed straight from the counting) decodes, row by row, to the
    sorted CSR's cells, with 3 bits of count (counts above 7 split over entries) and mini-blocks of 16 rows
    whose starts ``index`` gives."""
    rng = np.random.default_rng(9)
    V, mini_rows, count_bits = 5000, 16, 3
    docs = [list(rng.zipf(1.15, size=int(rng.integers(0, 3000))).clip(max=V) - 1) for _ in range(30)]
    pairs = pairs_of(docs, V, 3, head)
    work = pairs.work()
    key_bits = 32 - count_bits
    for lag in range(1, 4):
        (ip, ind, cnt), _ = pairs.lag(lag, work)
        index, packed = pairs.lag_spill(lag, work, mini_rows, count_bits)
        keys, counts = packed & ((1 << key_bits) - 1), packed >> key_bits
        assert counts.min() >= 1 and counts.max() <= 7 and (counts == 7).any()
        for m in range(index.size - 1):
            got = Counter()
            for k, c in zip(keys[index[m]:index[m + 1]].tolist(), counts[index[m]:index[m + 1]].tolist()):
                got[(m * mini_rows + k // V, k % V)] += c
            rows = range(m * mini_rows, min(V, (m + 1) * mini_rows))
            want = {(r, int(ind[e])): int(cnt[e]) for r in rows for e in range(ip[r], ip[r + 1])}
            assert dict(got) == want
            row_of = keys[index[m]:index[m + 1]] // V
            assert np.all(np.diff(row_of.astype(np.int64)) >= 0)  # rows ascending within a mini-block
        assert index[-1] == packed.size


def test_reference_detects_an_off_by_one_lag():
    """The comparison is not vacuous: lag 2's counts are not lag 1's on this input."""
    docs = [[1, 2, 3, 1, 2, 4]]
    _, got = check_all_lags(docs, 5, 2, 1)
    assert csr_as_counter(*got[2]) != naive_lag(docs, 1)


@settings(max_examples=60, deadline=None)
@given(docs=st.lists(st.lists(st.integers(0, 40), max_size=25), min_size=1, max_size=12),
       lags=st.integers(1, 6), head=st.sampled_from([0, 1, 3, 17, 41, None]), threads=st.sampled_from([1, 2]))
def test_all_lags_equal_naive_on_generated_documents(docs, lags, head, threads):
    check_all_lags(docs, 41, lags, head, threads)


@settings(max_examples=60, deadline=None)
@given(runs=st.lists(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 5), st.integers(1, 9)), max_size=30),
                     min_size=1, max_size=6), seed=st.integers(0, 2**16))
def test_merge_runs_equals_summing_the_runs(runs, seed):
    """Runs of packed (row, column, count) entries in mini-blocks of 4 rows (V = 6), rows ascending, a row's
    columns shuffled and a key repeated (as a split count is): merged, summed, in column order, rows counted."""
    from ctstore.count import merge_loops

    V, mini_rows, n_minis = 6, 4, 2
    bits = merge_loops.key_bits(V, mini_rows)  # 5: keys < 24
    rng = random.Random(seed)
    packed, starts, minis, want = [], [0], [], Counter()
    for run in runs:
        run = sorted(run, key=lambda e: (e[0], rng.random()))  # rows in order, columns in any order
        for r, c, n in run:
            packed.append(n << bits | (r % mini_rows) * V + c)
            want[(r, c)] += n
        starts.append(len(packed))
        rows = [r for r, _, _ in run]
        minis.append([sum(1 for r in rows if r // mini_rows < m) for m in range(n_minis + 1)])
    total = len(packed)
    for out_bits in (merge_loops.key_bits(V), 29):  # 29: counts of 7 or more go to the overflow list
        out = np.empty(total, np.uint32)
        over_pos, over_count = np.empty(total, np.int64), np.empty(total, np.uint32)
        row_nnz = np.zeros(n_minis * mini_rows, np.int64)
        n, k = merge_loops.merge_runs(np.array(packed, np.uint32), np.array(starts, np.int64),
                                      np.array(minis, np.int64).reshape(len(runs), n_minis + 1), mini_rows, V, bits,
                                      out_bits, out, over_pos, over_count, row_nnz)
        cols, counts = out[:n] & ((1 << out_bits) - 1), (out[:n] >> out_bits).astype(np.int64)
        assert (counts[over_pos[:k]] == (1 << (32 - out_bits)) - 1).all()
        counts[over_pos[:k]] = over_count[:k]
        assert k == sum(c >= (1 << (32 - out_bits)) - 1 for c in want.values())
        rows = np.repeat(np.arange(row_nnz.size), row_nnz)
        got = Counter({(int(r), int(c)): int(x) for r, c, x in zip(rows, cols, counts)})
        assert n == len(want) and got == want
        assert all(np.all(np.diff(cols[rows == r].astype(np.int64)) > 0) for r in range(row_nnz.size))


def test_merge_runs_refuses_a_count_above_uint32():
    """32 entries of 2^27 - 1 for one cell sum to 2^32 - 32 (exact, through the overflow list); 33 pass
    2^32 - 1: merge_runs says so."""
    from ctstore.count import merge_loops

    V, mini_rows = 6, 4
    bits = merge_loops.key_bits(V, mini_rows)
    cmax = (1 << (32 - bits)) - 1
    for entries, want in ((32, 32 * cmax), (33, -1)):
        packed = np.full(entries, cmax << bits | (1 * V + 2), np.uint32)  # row 1, column 2
        out, over_pos, over_count = np.empty(entries, np.uint32), np.empty(1, np.int64), np.empty(1, np.uint32)
        row_nnz = np.zeros(mini_rows, np.int64)
        n, k = merge_loops.merge_runs(packed, np.array([0, entries], np.int64), np.array([[0, entries]], np.int64),
                                      mini_rows, V, bits, merge_loops.key_bits(V), out, over_pos, over_count, row_nnz)
        if want < 0:
            assert n == -1
        else:
            assert (n, k) == (1, 1) and out[0] & 7 == 2 and over_pos[0] == 0 and int(over_count[0]) == want
            assert row_nnz.tolist() == [0, 1, 0, 0]


@settings(max_examples=60, deadline=None)
@given(cells=st.dictionaries(st.tuples(st.integers(0, 9), st.integers(0, 6)), st.integers(1, 70), max_size=40),
       mini_rows=st.sampled_from([1, 3, 4, 16]))
def test_spill_pack_splits_counts_and_indexes_mini_blocks(cells, mini_rows):
    """A CSR (V = 10 rows, 7 columns) packed with a field of 3 count bits: decoding the entries gives the
    cells back (a count above 7 as several entries of its key), and the index says where each mini-block's
    entries start; checked against decoding by hand."""
    from ctstore.count import merge_loops

    V, count_bits = 10, 3
    key_bits = 32 - count_bits
    rows = sorted(cells)
    indptr = np.zeros(V + 1, np.int64)
    for r, _ in rows:
        indptr[r + 1] += 1
    indptr = np.cumsum(indptr)
    indices = np.array([c for _, c in rows], np.int32)
    counts = np.array([cells[k] for k in rows], np.uint32)
    n_minis = -(-V // mini_rows)
    index = np.zeros(n_minis + 1, np.int64)
    n = merge_loops.spill_index(indptr, counts, mini_rows, count_bits, index)
    out = np.zeros(n + 1, np.uint32)
    assert merge_loops.spill_pack(indptr, indices, counts, V, mini_rows, count_bits, out) == n
    assert out[n] == 0  # nothing written past the entries counted
    got = Counter()
    decoded = [(int(x) >> key_bits, int(x) & ((1 << key_bits) - 1)) for x in out[:n]]
    assert all(1 <= c <= 7 for c, _ in decoded)
    at = 0
    for m in range(n_minis):
        assert index[m] == at
        for r in range(m * mini_rows, min(V, (m + 1) * mini_rows)):
            for e in range(indptr[r], indptr[r + 1]):
                while True:  # this cell's entries follow one another
                    c, key = decoded[at]
                    assert key == (r % mini_rows) * V + indices[e]
                    got[(r, int(indices[e]))] += c
                    at += 1
                    if got[(r, int(indices[e]))] == cells[(r, int(indices[e]))]:
                        break
    assert index[n_minis] == at == n and dict(got) == cells
