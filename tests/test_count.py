from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import naive_counts, write_tokens
from ctstore.count import CountParams, count_cooccurrences, plan_count, plan_row_blocks
from ctstore.formats.counts import CountStore
from ctstore.formats.tokens import TokenShards


def store_as_dict(store: CountStore, lag: int) -> dict:
    m = store.matrix(lag).tocoo()
    return {(int(a), int(b)): int(x) for a, b, x in zip(m.row, m.col, m.data)}


def check_csr_invariants(store: CountStore, lag: int) -> None:
    indptr = store.indptr(lag)
    g = store.group[f"lag_{lag}"]
    assert g.attrs["encoding-type"] == "csr_matrix"
    assert list(g.attrs["shape"]) == [store.n_vocab, store.n_vocab]
    assert indptr[0] == 0 and indptr[-1] == store.nnz(lag) and indptr.size == store.n_vocab + 1
    assert np.all(np.diff(indptr) >= 0)
    indices = g["indices"][:]
    assert indices.dtype == np.uint32 and g["data"].dtype == np.uint32
    for r in range(store.n_vocab):
        row = indices[indptr[r]:indptr[r + 1]]
        assert np.all(np.diff(row.astype(np.int64)) > 0), "indices sorted and unique within a row"
    assert (g["data"][:] > 0).all()


docs_strategy = st.lists(st.lists(st.integers(0, 40), min_size=0, max_size=60), min_size=1, max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=docs_strategy, lags=st.integers(1, 6))
def test_counts_equal_naive_counter_on_generated_corpora(tmp_path_factory, docs, lags):
    from ctstore.workspace import Workspace

    if sum(map(len, docs)) == 0:
        docs = docs + [[1, 2, 3]]
    ws = Workspace(str(tmp_path_factory.mktemp("hyp")))
    tokens = write_tokens(ws, docs, n_vocab=41, row_group_tokens=17, shard_tokens=50)
    counts = count_cooccurrences(tokens, ws, params=CountParams(lags=lags), scheduler="sync")
    check_store_equals_naive(counts, docs, lags)


def test_counts_equal_naive_counter_on_sample_corpus(sample_tokens, sample_counts):
    shards = TokenShards.from_artifact(sample_tokens)
    docs = []
    for s in range(len(shards.shards)):
        values, offsets = shards.read(s)
        docs += [values[offsets[i]:offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]
    assert len(shards.shards) > 1, "the fixture uses several shards so merging is exercised"
    store = CountStore.from_artifact(sample_counts)
    for lag in range(1, 11):
        assert store_as_dict(store, lag) == naive_counts(docs, lag), f"lag {lag}"
    assert int(store.unigram.sum()) == sample_tokens.manifest["tokens"]


def test_row_block_reads_match_full_matrix(sample_counts):
    store = CountStore.from_artifact(sample_counts)
    full = store.matrix(2)
    block = store.row_block(2, 1000, 5000)
    assert (block != full[1000:5000]).nnz == 0


def read_piece(prefix: str, V: int) -> tuple[np.ndarray, np.ndarray]:
    """A reduce piece's columns and counts, unpacked by hand: one uint32 per entry, the column in the low
    bit_length(V - 1) bits, the count above, or from the overflow list where the field is all ones."""
    from ctstore.formats.scratch import npy_layout, read_slice
    from ctstore.location import Location

    loc = Location.of(prefix + ".entries.npy")
    layout = npy_layout(loc)
    packed, where, values = (np.array(read_slice(loc, entry, 0, entry[1][0])) for entry in layout)
    bits = max(1, (V - 1).bit_length())
    counts = (packed >> bits).astype(np.int64)
    assert (counts[where] == (1 << (32 - bits)) - 1).all()
    counts[where] = values
    return packed & ((1 << bits) - 1), counts


def test_reduce_with_tiny_caps_merges_incrementally_and_stays_exact(ws, tmp_path):
    from ctstore.count import MINI_ROWS, map_task, reduce_task

    rng = np.random.default_rng(3)
    V = 3 * MINI_ROWS
    docs = [rng.integers(0, V, size=rng.integers(1, 400)).tolist() for _ in range(60)]
    tokens = write_tokens(ws, docs, n_vocab=V, row_group_tokens=500, shard_tokens=4000)
    shards = TokenShards.from_artifact(tokens)
    dirs = []
    for s, shard in enumerate(shards.shards):
        d = str(tmp_path / f"m{s}")
        map_task(shards.shard(s), tuple(range(len(shard["row_groups"]))), V, 2, d)
        dirs.append(d)
    assert len(dirs) > 2
    ref = naive_counts(docs, 2)
    got = {}
    for lo in range(3):  # one reduce block per mini-block, each merging with a cap of 50 entries
        prefix = str(tmp_path / f"r{lo}")
        reduce_task(dirs, 2, lo, lo + 1, V, 50, prefix)
        indices, data = read_piece(prefix, V)
        rownnz = np.load(prefix + ".rownnz.npy")
        rows = np.repeat(np.arange(lo * MINI_ROWS, (lo + 1) * MINI_ROWS), rownnz)
        got.update({(int(r), int(c)): int(x) for r, c, x in zip(rows, indices, data)})
    assert got == ref


def test_spill_format_bounds_the_vocabulary_in_one_line():
    """A spilled entry is one uint32: (row % 256)·V + column under at least one bit of count, so V <= 2^23."""
    from ctstore.count.plan import plan_count, spill_format_holds
    from ctstore.errors import CtstoreError

    shards = [{"name": "s", "row_groups": [10]}]
    assert spill_format_holds(2**23) and not spill_format_holds(2**23 + 1)
    assert plan_count(2**23, shards, 2, 4 << 30).n_tokens == 10
    with pytest.raises(CtstoreError, match=r"n_vocab=8388609 too large for the count spill format"):
        plan_count(2**23 + 1, shards, 2, 4 << 30)


@pytest.mark.parametrize("entries,cap,expected", [
    ([5, 5, 5], 10, [(0, 2), (2, 3)]),
    ([20, 1, 1], 10, [(0, 1), (1, 3)]),
    ([0, 0, 0], 1, [(0, 3)]),
    ([3], 1, [(0, 1)]),
])
def test_plan_row_blocks_table(entries, cap, expected):
    assert plan_row_blocks(np.array(entries), cap) == expected


def test_plan_refuses_budget_too_small():
    from ctstore.errors import CtstoreError

    with pytest.raises(CtstoreError, match="count map step"):
        plan_count(100, [{"name": "p", "row_groups": [10]}], 3, task_memory=10_000)


def test_token_id_beyond_vocabulary_is_a_clear_error(ws):
    from ctstore.errors import CtstoreError

    tokens = write_tokens(ws, [[1, 2, 50]], n_vocab=10)
    with pytest.raises(CtstoreError, match=r"part-00000.parquet: token id 50 >= declared vocabulary 10"):
        count_cooccurrences(tokens, ws, params=CountParams(lags=1), scheduler="sync")
    assert ws.list("counts") == []


@pytest.mark.slow
def test_local_cluster_gives_identical_store(session_ws, sample_tokens, sample_counts):
    counts = count_cooccurrences(sample_tokens, session_ws, params=CountParams(lags=10), memory="2GB",
                                 scheduler="local", force=True)
    a, b = CountStore.from_artifact(sample_counts), CountStore.from_artifact(counts)
    for lag in (1, 10):
        assert (a.matrix(lag) != b.matrix(lag)).nnz == 0


def test_merge_packed_and_argsort_paths_agree_with_a_dictionary():
    from ctstore.count import COUNT_BITS, merge_sorted_counts

    rng = np.random.default_rng(0)
    runs = []
    for _ in range(4):
        keys = np.unique(rng.integers(0, 5000, size=800)).astype(np.uint64)
        runs.append((keys, rng.integers(1, 50, size=keys.size).astype(np.uint32)))
    ref: dict = {}
    for keys, counts in runs:
        for k, c in zip(keys.tolist(), counts.tolist()):
            ref[k] = ref.get(k, 0) + c
    for n_vocab in (None, 100):  # None: argsort path; 100: packed path
        keys, counts = merge_sorted_counts(runs, n_vocab)
        assert dict(zip(keys.tolist(), counts.tolist())) == ref
    # one run out of order with repeated keys (a spill's row, a split count): summed, not passed through
    shuffled = np.concatenate([runs[0][0], runs[0][0][::-1]]), np.concatenate([runs[0][1], runs[0][1][::-1]])
    for n_vocab in (None, 100):
        keys, counts = merge_sorted_counts([shuffled], n_vocab)
        assert keys.tolist() == runs[0][0].tolist() and counts.tolist() == (2 * runs[0][1].astype(np.uint64)).tolist()
    big = [(runs[0][0], np.full(runs[0][0].size, 1 << COUNT_BITS, np.uint64)), runs[1]]
    keys, counts = merge_sorted_counts(big, 100)  # counts too large to pack: falls back, still exact
    assert int(counts.sum()) == int(big[0][1].sum()) + int(runs[1][1].sum())


# --- count engine v2 (issue 12): dense head + counting-sort tail, one in-process pass -----------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=docs_strategy, lags=st.integers(1, 6), head=st.sampled_from([None, 0, 1, 7, 41, 1000]))
def test_one_pass_counts_equal_naive_counter_for_every_head_size(tmp_path_factory, docs, lags, head):
    """head 0: every pair in the tail; 41 = V: every pair in the head; 1000 > V: clipped to V."""
    from ctstore.workspace import Workspace

    if sum(map(len, docs)) == 0:
        docs = docs + [[1, 2, 3]]
    ws = Workspace(str(tmp_path_factory.mktemp("one")))
    tokens = write_tokens(ws, docs, n_vocab=41, row_group_tokens=17, shard_tokens=50)
    counts = count_cooccurrences(tokens, ws, params=CountParams(lags=lags), head=head)
    assert counts.manifest["mode"] == "one-pass" and counts.manifest["dense_head"] == min(41, head or 0) \
        or head is None
    check_store_equals_naive(counts, docs, lags)


def scipy_lag_csr(docs: list, V: int, lag: int):
    """Reference: a scipy.sparse COO of every in-document lag-``lag`` pair, duplicates summed, rows sorted."""
    import scipy.sparse as sp

    rows = np.concatenate([d[:-lag] for d in docs if d.size > lag] + [np.empty(0, np.int64)])
    cols = np.concatenate([d[lag:] for d in docs if d.size > lag] + [np.empty(0, np.int64)])
    m = sp.coo_matrix((np.ones(rows.size, np.int64), (rows, cols)), shape=(V, V)).tocsr()
    m.sum_duplicates()
    m.sort_indices()
    return m


@pytest.mark.parametrize("V,head", [(300, 0), (300, 3), (300, 64), (300, 300), (300, 10_000), (3000, 1024),
                                    (3000, 0)])
def test_chunk_pairs_lag_equals_scipy_for_every_head_size(V, head):
    """The compiled kernel alone against scipy: CSR arrays equal (sorted unique columns, counts summed).

    V = 3000 spans several row buckets of the tail (512 rows each), Zipf rows give head rows with long
    tail columns (sorted, not insertion-sorted) and many one-token and empty documents.
    """
    from ctstore.count import ChunkPairs

    rng = np.random.default_rng(head + V)
    docs = [rng.zipf(1.2, size=int(rng.integers(0, 400))).clip(max=V - 1) for _ in range(300)]
    docs += [np.array([], int), np.array([V - 1])]
    values = np.concatenate(docs).astype(np.uint32)
    offsets = np.concatenate([[0], np.cumsum([d.size for d in docs])])
    pairs = ChunkPairs(values, offsets, V, 6, head=head)
    assert pairs.head == min(head, V)
    work = pairs.work()  # one scratch for every lag, as each thread of the engines uses it
    for lag in (6, 1, 2, 3, 4, 5):
        (indptr, indices, data), _ = pairs.lag(lag, work)
        ref = scipy_lag_csr(docs, V, lag)
        assert indptr.dtype == np.int64 and indices.dtype == np.int32 and data.dtype == np.uint32
        np.testing.assert_array_equal(indptr, ref.indptr)
        np.testing.assert_array_equal(indices, ref.indices)
        np.testing.assert_array_equal(data, ref.data)
        assert not work.table.any() and not work.acc.any(), "scratch left zero for the next lag"


@settings(max_examples=40, deadline=None)
@given(docs=st.lists(st.lists(st.integers(0, 1100), max_size=50), min_size=1, max_size=20),
       lags=st.integers(1, 5), head=st.sampled_from([0, 1, 2, 600, 2000]))
def test_chunk_pairs_lag_equals_scipy_on_generated_documents(docs, lags, head):
    """V = 1101: rows fall in three tail buckets; ids at bucket edges (511, 512, 1023, 1024) are likely."""
    from ctstore.count import ChunkPairs

    V = 1101
    docs = [np.array(d, np.int64) for d in docs]
    values = np.concatenate(docs).astype(np.uint32)
    offsets = np.concatenate([[0], np.cumsum([d.size for d in docs])])
    pairs = ChunkPairs(values, offsets, V, lags, head=head)
    work = pairs.work()
    for lag in range(1, lags + 1):
        (indptr, indices, data), _ = pairs.lag(lag, work)
        ref = scipy_lag_csr(docs, V, lag)
        np.testing.assert_array_equal(indptr, ref.indptr)
        np.testing.assert_array_equal(indices, ref.indices)
        np.testing.assert_array_equal(data, ref.data)


def test_chunk_pairs_rejects_inputs_the_unchecked_loops_would_overrun():
    """The compiled loops skip bounds checks: a wrong unigram, id or offsets must fail, not write out of bounds."""
    from ctstore.count import ChunkPairs
    from ctstore.errors import CtstoreError

    values = np.array([1, 2, 3, 1], np.uint32)
    with pytest.raises(CtstoreError, match="unigram"):
        ChunkPairs(values, np.array([0, 4]), 5, 2, head=1, unigram=np.array([0, 1, 1, 1, 0]))
    with pytest.raises(CtstoreError, match="vocabulary"):
        ChunkPairs(values, np.array([0, 4]), 3, 2)
    with pytest.raises(CtstoreError, match="offsets"):
        ChunkPairs(values, np.array([0, 3]), 5, 2)


def test_one_pass_and_spilled_map_reduce_give_identical_stores(ws):
    """Same tokens: one in-process pass (no cluster) vs map/reduce spills over several tasks and blocks."""
    import zarr

    rng = np.random.default_rng(5)
    V = 3 * 256 + 17  # several mini-blocks, the last one partial
    docs = [rng.zipf(1.1, size=int(rng.integers(1, 600))).clip(max=V - 1).tolist() for _ in range(80)]
    tokens = write_tokens(ws, docs, n_vocab=V, row_group_tokens=700, shard_tokens=6000)
    one = count_cooccurrences(tokens, ws, params=CountParams(lags=4))
    assert one.manifest["mode"] == "one-pass"
    spilled = count_cooccurrences(tokens, ws, params=CountParams(lags=4), scheduler="sync", spill=True, force=True)
    assert spilled.manifest["mode"] == "map-reduce" and spilled.manifest["map_tasks"] > 2
    assert spilled.fingerprint == one.fingerprint and spilled.manifest["nnz"] == one.manifest["nnz"]
    # the second count replaced the first under the same fingerprint: recount one pass elsewhere to compare
    from ctstore.workspace import Workspace

    ws2 = Workspace(str(ws.root) + "-one")
    tokens2 = write_tokens(ws2, docs, n_vocab=V, row_group_tokens=700, shard_tokens=6000)
    one = count_cooccurrences(tokens2, ws2, params=CountParams(lags=4))
    a = zarr.open_group(f"{one.path}/counts.zarr", mode="r")
    b = zarr.open_group(f"{spilled.path}/counts.zarr", mode="r")
    for name in ["unigram", "rank"] + [f"lag_{k}/{x}" for k in range(1, 5) for x in ("indptr", "indices", "data")]:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name][:], b[name][:]), name
    for lag in range(1, 5):
        assert store_as_dict(CountStore.from_artifact(one), lag) == naive_counts(docs, lag)


@pytest.mark.parametrize("batched,narrow_pieces", [(False, False), (True, False), (False, True), (True, True)])
def test_map_reduce_splits_counts_above_the_packed_field(ws, monkeypatch, batched, narrow_pieces):
    """V = 600,000 leaves 4 bits of count beside a spilled key (cmax 15): pairs seen hundreds of times in a
    map task go through the spill as many entries of one key and come back summed; ``batched`` makes every
    reduce block exceed its cap, so the incremental merge (numpy's sort) sums them instead of merge_runs;
    ``narrow_pieces`` leaves a reduce piece 4 bits of count beside a column, so sums of 15 or more go
    through its overflow list to assemble."""
    import dataclasses

    import ctstore.count.mapreduce as mapreduce_module
    from ctstore.count import merge_loops

    V = 600_000
    assert 32 - merge_loops.key_bits(V, 256) == 4
    rng = np.random.default_rng(3)
    common = np.array([0, 1, 2, 3, 255, 256, 599_999])
    docs = [np.where(rng.random(n) < 0.8, rng.choice(common, n), rng.integers(0, V, n)).tolist()
            for n in rng.integers(50, 400, size=40)]
    tokens = write_tokens(ws, docs, n_vocab=V, row_group_tokens=2000, shard_tokens=5000)
    calls = []
    if narrow_pieces:
        key_bits = merge_loops.key_bits
        monkeypatch.setattr(merge_loops, "key_bits", lambda V, mini_rows=1: key_bits(V, mini_rows) if mini_rows > 1
                            else 28)
    if batched:
        plan_count, reduce_batched = mapreduce_module.plan_count, mapreduce_module._reduce_batched
        monkeypatch.setattr(mapreduce_module, "plan_count",
                            lambda *a: dataclasses.replace(plan_count(*a), reduce_entries=20))
        monkeypatch.setattr(mapreduce_module, "_reduce_batched", lambda *a: calls.append(1) or reduce_batched(*a))
    counts = count_cooccurrences(tokens, ws, params=CountParams(lags=2), scheduler="sync", spill=True)
    assert bool(calls) == batched
    assert counts.manifest["mode"] == "map-reduce" and counts.manifest["map_tasks"] > 1
    store = CountStore.from_artifact(counts)
    for lag in (1, 2):
        want = naive_counts(docs, lag)
        assert max(want.values()) > 15 * counts.manifest["map_tasks"]  # some pair needs split entries
        assert store_as_dict(store, lag) == want
        check_csr_invariants(store, lag)


def test_interrupted_count_rerun_with_another_memory_budget_is_exact(ws, monkeypatch):
    """Issue 10: reduce pieces were named by their first row only, so a rerun with another plan read a
    piece of the wrong size ('provided out is the wrong size'). Now a piece is named by its exact range."""
    import ctstore.count.mapreduce as mapreduce_module
    import ctstore.count.plan as plan_module

    rng = np.random.default_rng(7)
    V = 8 * 256
    docs = [rng.integers(0, V, size=int(rng.integers(1, 3000))).tolist() for _ in range(120)]
    tokens = write_tokens(ws, docs, n_vocab=V, row_group_tokens=20_000, shard_tokens=100_000)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # first run: small reduce blocks (as with a small budget), killed at assemble
        m.setattr(plan_module, "REDUCE_BYTES_PER_ENTRY", 1200)
        m.setattr(mapreduce_module, "assemble_task", interrupted)
        with pytest.raises(KeyboardInterrupt):
            count_cooccurrences(tokens, ws, params=CountParams(lags=2), scheduler="sync", memory="600MB")
    assert ws.list("counts") == []
    pieces = list((Path(ws.root) / "tmp").glob("counts-*/reduce*/lag01-*.rownnz.npy"))
    assert len(pieces) > 1, "the first run finished several reduce pieces"
    counts = count_cooccurrences(tokens, ws, params=CountParams(lags=2), scheduler="sync", memory="4GB")
    store = CountStore.from_artifact(counts)
    for lag in (1, 2):
        assert store_as_dict(store, lag) == naive_counts(docs, lag)
        check_csr_invariants(store, lag)


def check_store_equals_naive(counts, docs, lags: int, n_vocab: int = 41) -> None:
    """Every lag, the unigram and the rank of a count store against the naive counter."""
    store = CountStore.from_artifact(counts)
    for lag in range(1, lags + 1):
        assert store_as_dict(store, lag) == naive_counts([d for d in docs if d], lag)
        check_csr_invariants(store, lag)
    unigram = np.bincount(np.concatenate([np.asarray(d, int) for d in docs if d]), minlength=n_vocab)
    assert np.array_equal(store.unigram, unigram)
    assert np.array_equal(store.rank, np.lexsort((np.arange(n_vocab), -unigram)))


@pytest.mark.parametrize("span", [1, 200, 256, 70_000, 5_000_000])
def test_radix_sort_of_a_row_equals_numpy_sort(span):
    """The kernel's row sort: one, two, three passes (the last leaving the result in the scratch)."""
    from ctstore.count import loops

    rng = np.random.default_rng(span)
    a = rng.integers(7, 7 + span + 1, 3000).astype(np.int32)
    a[:2] = 7, 7 + span  # the span's both ends
    got = a.copy()
    loops._radix_sort(got, 100, 2900, 7, 7 + span, np.empty(3000, np.int32), np.empty(256, np.int64))
    np.testing.assert_array_equal(got[100:2900], np.sort(a[100:2900]))
    np.testing.assert_array_equal(got[:100], a[:100])
    np.testing.assert_array_equal(got[2900:], a[2900:])


def test_write_elements_writes_the_chunk_files_zarr_writes(tmp_path):
    """Chunks encoded here (``encode_chunk``) against Zarr's own ``arr[:] = values`` of the same values: the
    same files, byte for byte (a partial last chunk padded, an all-zero chunk left unwritten), also when the
    values arrive in two writes as map/reduce assembles them; read back by Zarr equal to the values."""
    import zarr

    from ctstore.formats.counts import ZARR_CHUNK, compressors, write_elements
    from ctstore.location import Location

    rng = np.random.default_rng(3)
    n = 3 * ZARR_CHUNK + 12_345
    values = rng.zipf(1.3, n).clip(max=2**32 - 1).astype(np.uint32)
    values[ZARR_CHUNK:2 * ZARR_CHUNK] = 0
    files = {}
    for name in ("zarr", "whole", "split"):
        arr = zarr.create_array(str(tmp_path / name), shape=(n,), dtype=np.uint32, chunks=(ZARR_CHUNK,),
                                compressors=compressors())
        loc = Location.of(str(tmp_path / name))
        if name == "zarr":
            arr[:] = values
        elif name == "whole":
            write_elements(loc, 0, values)
        else:
            write_elements(loc, 2 * ZARR_CHUNK, values[2 * ZARR_CHUNK:])
            write_elements(loc, 0, values[:2 * ZARR_CHUNK])
        files[name] = {p.relative_to(tmp_path / name).as_posix(): p.read_bytes()
                       for p in (tmp_path / name).rglob("*") if p.is_file()}
    assert sorted(files["zarr"]) == ["c/0", "c/2", "c/3", "zarr.json"]
    assert files["whole"] == files["zarr"] and files["split"] == files["zarr"]
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "whole"), mode="r")[:], values)
    with pytest.raises(ValueError, match="chunk boundary"):
        write_elements(loc, 5, values[:10])
    with pytest.raises(ValueError, match="uint32"):
        write_elements(loc, 0, values[:10].astype(np.int64))


def _many_piece_docs(V: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    docs = [rng.zipf(1.3, int(rng.integers(0, 120))).clip(max=V - 1) for _ in range(400)]
    return docs + [np.array([], int), np.array([V - 1]), np.array([0])]


def test_streamed_layout_equals_reading_the_corpus_first(ws, tmp_path, monkeypatch):
    """A tokens artifact with its unigram is laid out piece by piece as it is read (two threads, claims in
    order); one without is read whole first. Several shards of many pieces (4 row groups each): the stores
    are identical file for file and equal the naive counter."""
    from ctstore.count import onepass
    from ctstore.workspace import Workspace

    V = 1500
    docs = _many_piece_docs(V, 11)
    used = []
    real = onepass._read_laid_out
    monkeypatch.setattr(onepass, "_read_laid_out", lambda *a: used.append(real(*a)) or used[-1])
    stores = []
    for unigram, w in ((True, ws), (False, Workspace(str(tmp_path / "ws2")))):
        tokens = write_tokens(w, docs, n_vocab=V, row_group_tokens=200, shard_tokens=5000, unigram=unigram)
        assert sum(len(s["row_groups"]) for s in tokens.manifest["shards"]) > 4 * len(tokens.manifest["shards"])
        stores.append(count_cooccurrences(tokens, w, params=CountParams(lags=5)))
    assert used[0] is not None and used[1] is None, "the first count laid out as it read, the second read first"
    for lag in range(1, 6):
        assert store_as_dict(CountStore.from_artifact(stores[0]), lag) == naive_counts(docs, lag)
    a, b = (Path(s.path) / "counts.zarr" for s in stores)
    listing = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert listing == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    for name in listing:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize("damage", ["unigram", "docs"])
def test_tokens_whose_unigram_or_document_counts_lie_fail_in_one_line(ws, damage):
    """The layout trusts the stored unigram and document counts to size its arrays: a unigram with one count
    moved to another id (same total) or a shard claiming fewer documents is a one-line error naming the
    tokens, with no count store published; the compiled loops write nothing out of bounds."""
    import json

    from ctstore.errors import CtstoreError
    from ctstore.formats.npy import load_npy, save_npy
    from ctstore.formats.tokens import UNIGRAM

    V = 1500
    docs = _many_piece_docs(V, 12)
    tokens = write_tokens(ws, docs, n_vocab=V, row_group_tokens=200, shard_tokens=5000)
    loc = Path(tokens.path)
    if damage == "unigram":
        unigram = load_npy(tokens.location.child(UNIGRAM))
        rare, absent = int(np.flatnonzero(unigram == 1)[0]), int(np.flatnonzero(unigram == 0)[0])
        unigram[rare] -= 1
        unigram[absent] += 1
        save_npy(tokens.location.child(UNIGRAM), unigram)
    else:
        manifest = json.loads((loc / "manifest.json").read_text())
        manifest["shards"][0]["docs"] -= 1
        (loc / "manifest.json").write_text(json.dumps(manifest))
        tokens = ws.find("tokens", tokens.fingerprint)
    with pytest.raises(CtstoreError) as err:
        count_cooccurrences(tokens, ws, params=CountParams(lags=3))
    message = str(err.value)
    assert "\n" not in message and tokens.location.url in message and "damaged" in message
    assert ws.list("counts") == []


def test_count_command_imports_no_pandas_torch_dask_or_scipy_sparse(tmp_path):
    """Structural, not timed: a whole one-pass ``ctstore count`` process imports none of pandas (Arrow's
    ``to_numpy`` pulled it in: 0.18 s), torch, dask or scipy.sparse."""
    import subprocess
    import sys

    from ctstore.workspace import Workspace

    tokens = write_tokens(Workspace(str(tmp_path / "ws")), _many_piece_docs(1500, 13), n_vocab=1500)
    code = ("import sys\nfrom ctstore.cli import main\n"
            f"main(['count', {tokens.fingerprint!r}, '--memory', '1GB', '-q', '-w', {str(tmp_path / 'ws')!r}])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pandas', 'torch', 'dask', 'distributed')"
            " or m.startswith('scipy.sparse')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_chunk_pairs_filled_in_pieces_equal_one_layout_and_check_the_unigram():
    """``ChunkPairs.empty`` + ``append`` piece by piece lays out the same arrays as one call on the whole
    corpus; a piece beyond the unigram's room, or pieces that stop short of it, are errors."""
    from ctstore.count import ChunkPairs
    from ctstore.errors import CtstoreError

    V = 1500
    docs = _many_piece_docs(V, 14)
    values = np.concatenate(docs).astype(np.uint32)
    offsets = np.concatenate([[0], np.cumsum([d.size for d in docs])]).astype(np.int64)
    whole = ChunkPairs(values, offsets, V, 4, head=100)
    unigram = np.bincount(values, minlength=V).astype(np.uint64)
    parts = ChunkPairs.empty(V, 4, unigram, len(docs), head=100)
    for a, b in ((0, 150), (150, 151), (151, len(docs))):
        parts.append(values[offsets[a]:offsets[b]], offsets[a:b + 1] - offsets[a])
    parts.finish()
    for name in ("head_ids", "stream", "code", "tail_pos", "tail_start"):
        np.testing.assert_array_equal(getattr(parts, name), getattr(whole, name), err_msg=name)
    short = ChunkPairs.empty(V, 4, unigram, len(docs), head=100)
    short.append(values[:offsets[150]], offsets[:151])
    with pytest.raises(CtstoreError, match="unigram"):
        short.finish()
    with pytest.raises(CtstoreError, match="unigram"):
        short.append(values, offsets)  # more than the room left
