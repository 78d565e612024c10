"""The one-pass engine of ``count``: the whole corpus in this process, lags on threads, no spill, no cluster.

Chosen by default (scheduler ``local``, no ``--spill``) when the corpus fits
``--memory``: decided from the tokens' stored unigram before anything is read
(:func:`_one_pass_outlook`, also behind ``ctstore count --plan``), and checked
again once the corpus is read. Lags are counted on threads by the all-lags kernel
(:mod:`.fused`) where one group holds every lag's tail entries, else lag by lag under
a :class:`_MemoryGate`; each lag's CSR is written straight to Zarr.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..cluster import CLIENT_RESERVE
from ..errors import CtstoreError
from ..formats.counts import CountStoreWriter
from ..formats.tokens import TokenShards, read_unigram
from ..location import Location
from ..log import log, stopwatch
from ..units import format_bytes, parse_memory
from . import fused
from .kernel import (ENTRY_BYTES, HEAD_CHOICES, ChunkPairs, HeadWork, LayoutMismatch, _loops, _write_error,
                     choose_head, read_chunk)
from .plan import FUSED_BYTES_PER_TOKEN, spill_format_holds


class _MemoryGate:
    """Reserve bytes before a lag's work; a reservation larger than the rest waits until it runs alone."""

    def __init__(self, capacity: int):
        self.capacity, self.used = capacity, 0
        self.cond = threading.Condition()

    def acquire(self, n: int) -> None:
        with self.cond:
            while self.used and self.used + n > self.capacity:
                self.cond.wait()
            self.used += n

    def release(self, n: int) -> None:
        with self.cond:
            self.used -= n
            self.cond.notify_all()


def _count_one_pass(store: Location, tokens, shards: TokenShards, params, memory, head) -> dict | None:
    """Count into ``store`` in this process when the corpus fits one pass in ``memory``; None when it does not.

    Returns the manifest fields this engine knows (``nnz`` keyed by lag), like
    :func:`ctstore.count.mapreduce._count_into`.
    """
    budget = parse_memory(memory)
    V, L = shards.n_vocab, params.lags
    room = budget - CLIENT_RESERVE
    if _one_pass_outlook(tokens, shards, L, head, budget)[0] == "no":
        return None
    timings: dict = {}
    nnz_by_lag, stats = {}, {}
    start = time.perf_counter()
    warm = warm_up(V, L, head)
    with stopwatch(timings, "read_s"):
        laid_out = None if params.val_fraction is not None else _read_laid_out(tokens, shards, L, head)
        if laid_out is None:
            values, offsets = _read_all(shards, params.val_fraction)
            unigram = _loops().unigram_counts(values, V)
            pairs = ChunkPairs(values, offsets, V, L, head=head, unigram=unigram)
            del values, offsets
        else:
            pairs, unigram = laid_out
        n_tokens = int(unigram.sum())  # training documents only when params.val_fraction is set
    warm.join()
    shared = pairs.nbytes() + 3 * V * 8
    per_lag, per_thread = pairs.entry_bytes_bound(), pairs.work_bytes()
    if shared + per_thread + per_lag > room:
        log(f"count: one pass needs up to {format_bytes(shared + per_thread + per_lag + CLIENT_RESERVE)}; "
            f"the budget is {format_bytes(budget)}: map/reduce instead")
        return None
    threads = max(1, min(os.cpu_count() or 1, L))
    # all-lags kernel: tail entries of a group of lags are held until its lags are built; each lag's CSR
    # copies its own, so they count twice; in flight: one result per thread and the one being written
    rest = room - shared - threads * fused.work_bytes(pairs, L) - (threads + 1) * fused.csr_bytes_bound(pairs)
    allowance = rest // 2
    all_lags = allowance > 0 and fused.one_group_fits(pairs, allowance)
    if all_lags:
        results = fused.count_all_lags(pairs, threads, allowance, stats=stats)
    else:
        threads = max(1, min(threads, (room - shared - per_lag) // max(per_thread, 1)))
        results = fused.count_lag_by_lag(pairs, threads, room - shared - threads * per_thread)
    log(f"count: one pass in this process: {n_tokens} tokens, V={V}, lags 1..{L}, dense head {pairs.head} "
        f"ids, {'all lags at once' if all_lags else 'lag by lag'}, {threads} thread(s), "
        f"memory budget {format_bytes(budget)}")
    writer = CountStoreWriter(store, unigram, L, tokens.fingerprint, tokens.manifest.get("tokenizer"))
    with stopwatch(timings, "count_s"):
        for lag, (indptr, indices, counts) in results:
            nnz_by_lag[lag] = int(indptr[-1])
            try:
                with stopwatch(timings, "write_s"):
                    writer.write_lag(lag, indptr, indices, counts)
            except OSError as exc:
                raise _write_error(store.url, "count store", exc) from None
            del indptr, indices, counts
    timings["total_s"] = round(time.perf_counter() - start, 3)
    rate = n_tokens / max(timings["total_s"], 1e-9)
    if all_lags:
        timings["tail_s"] = round(stats["tail_s"], 3)
        log(f"count: lag groups {stats['groups']} ({stats['retries']} retried), tail passes {stats['tail_s']:.1f} s")
    log(f"count: {n_tokens} tokens in {timings['total_s']:.1f} s ({rate / 1e6:.2f}M tokens/s, one pass); "
        f"nnz per lag {min(nnz_by_lag.values())}..{max(nnz_by_lag.values())}")
    return {"n_vocab": V, "tokens": n_tokens, "nnz": nnz_by_lag, "mode": "one-pass", "threads": threads,
            "dense_head": pairs.head, "kernel": "all-lags" if all_lags else "per-lag",
            "lag_groups": stats.get("groups"), "timings": timings, "tokens_per_s": round(rate), "memory_budget": budget}


def _one_pass_outlook(tokens, shards: TokenShards, lags: int, head: int | None, budget: int) -> tuple[str, int | None]:
    """Whether a one-pass count fits ``budget``, decided before reading the corpus, and its projected bytes.

    ``"no"``: map/reduce without reading (too many tokens for any head, or the
    tokens' unigram projects too much); ``"yes"``: the unigram projects it fits;
    ``"maybe"``: no unigram to project from, decided after reading.
    """
    room = budget - CLIENT_RESERVE
    n = shards.n_tokens
    if n * FUSED_BYTES_PER_TOKEN + HeadWork.nbytes(HEAD_CHOICES[-1], shards.n_vocab, 0) > room * 3 // 4:
        return "no", None  # cannot fit with room for the lags: not worth reading the corpus to find out
    if n >= 2**31 - 1 or not spill_format_holds(shards.n_vocab):  # map/reduce then says why, before any read
        return "no", None
    need = _one_pass_bytes_from_unigram(tokens, shards, lags, head)
    if need is None:
        return "maybe", None
    return ("yes" if need <= room else "no"), need


def _one_pass_bytes_from_unigram(tokens, shards: TokenShards, lags: int, head: int | None) -> int | None:
    """Memory a one-pass count would need, from the unigram the tokens artifact stores (None without one)."""
    try:
        unigram = read_unigram(tokens)
    except (OSError, ValueError):
        return None
    n = shards.n_tokens
    if unigram.shape != (shards.n_vocab,) or int(unigram.sum()) != n:
        return None
    H = min(shards.n_vocab, choose_head(unigram, n * lags, lags=lags) if head is None else max(0, int(head)))
    n_tail = n - int(np.sort(unigram)[::-1][:H].sum())
    m = n + lags * int(sum(s.get("docs", 0) for s in shards.shards) or tokens.manifest.get("docs", 0))
    shared = 10 * m + 4 * n_tail + 26 * shards.n_vocab  # stream, codes, tail positions, unigram, rank, head codes
    tail_pairs = min(m, 2 * n_tail)
    per_lag = ENTRY_BYTES * min(m, tail_pairs + H * H) + 8 * (shards.n_vocab + 1)
    return max(n * FUSED_BYTES_PER_TOKEN, shared + HeadWork.nbytes(H, shards.n_vocab, tail_pairs) + per_lag)


def _piece_jobs(shards: TokenShards, groups_per_piece: int = 4) -> list[tuple[int, list[int]]]:
    """``(shard index, row groups)`` of every piece of the corpus, in order."""
    return [(s, groups[g:g + groups_per_piece]) for s, shard in enumerate(shards.shards)
            for groups in [list(range(len(shard["row_groups"])))] for g in range(0, len(groups), groups_per_piece)]


def _read_pieces(shards: TokenShards, val_fraction: float | None = None, ahead: int = 3):
    """Yield ``(shard index, values uint32, offsets int64)`` for every document, a few row groups at a time,
    in order. Pieces are decoded on two threads (Parquet decoding releases the GIL), ``ahead`` in flight.
    With ``val_fraction``, the validation documents of ``ctstore.split`` are left out."""
    jobs = _piece_jobs(shards)

    def read(job):
        s, groups = job
        return s, *read_chunk(shards.shard(s), groups, shards.n_vocab, val_fraction)

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="ctstore-read") as pool:
        pending = [pool.submit(read, job) for job in jobs[:ahead]]
        for i in range(len(jobs)):
            piece = pending.pop(0).result()
            if i + ahead < len(jobs):
                pending.append(pool.submit(read, jobs[i + ahead]))
            yield piece
            del piece


def _read_all(shards: TokenShards, val_fraction: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every document of every shard (:func:`_read_pieces`) in one array: ``(values uint32, offsets int64)``."""
    values = np.empty(shards.n_tokens, np.uint32)
    lengths, at = [], 0
    for s, v, o in _read_pieces(shards, val_fraction):
        if at + v.size > values.size:
            raise CtstoreError(f"{shards.shard(s)}: holds more tokens than its manifest says")
        values[at:at + v.size] = v
        at += v.size
        lengths.append(np.diff(o))
        del v, o
    if val_fraction is not None:
        values = values[:at].copy()
    elif at != values.size:
        raise CtstoreError(f"{shards.url}: holds {at} tokens, its manifest says {values.size}")
    offsets = np.zeros(sum(x.size for x in lengths) + 1, np.int64)
    if lengths:
        np.cumsum(np.concatenate(lengths), out=offsets[1:])
    return values, offsets


def _read_laid_out(tokens, shards: TokenShards, lags: int, head: int | None) -> tuple[ChunkPairs, np.ndarray] | None:
    """The whole corpus laid out for counting as it is read: ``(pairs, unigram)``, or None to read it first.

    The tokens' stored unigram and per-shard document counts size the arrays before
    reading. Two threads each take a piece (a few row groups): decode it, count its
    ids, claim its slots in the pieces' order (:meth:`ChunkPairs.claim`) and lay it
    out (:meth:`ChunkPairs.fill`) while the other thread works on the next piece; no
    copy of the whole corpus is held. The pieces must match the stored unigram
    exactly (:meth:`ChunkPairs.finish`), else the tokens artifact is damaged: a
    one-line error.
    """
    docs = [shard.get("docs") for shard in shards.shards]
    if any(not isinstance(d, int) for d in docs):
        return None
    try:
        unigram = read_unigram(tokens)
    except (OSError, ValueError):
        return None
    if unigram.shape != (shards.n_vocab,) or int(unigram.sum()) != shards.n_tokens:
        return None
    pairs = ChunkPairs.empty(shards.n_vocab, lags, unigram, sum(docs), head)
    jobs = _piece_jobs(shards)
    turn = threading.Condition()
    claimed = [0]  # pieces claimed so far; a piece claims only after every earlier one

    def lay_out(i: int, decoded) -> None:
        values, offsets = decoded.result()
        counts = _loops().unigram_counts(values, shards.n_vocab)
        with turn:
            turn.wait_for(lambda: claimed[0] == i)
            try:
                start, cursor = pairs.claim(counts, int(offsets.size) - 1)
            finally:
                claimed[0] = i + 1
                turn.notify_all()
        pairs.fill(values, offsets, start, cursor)

    damaged = f"{shards.url}: the token shards do not match the tokens' unigram or document counts"
    # Decoding needs no compiled code: every piece is queued at once, so both cores decode while numba loads
    # (warm_up); layout tasks start in submission order on a FIFO pool, so a piece only waits on earlier ones
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="ctstore-read") as readers, \
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="ctstore-layout") as layers:
        decoded = [readers.submit(read_chunk, shards.shard(s), groups, shards.n_vocab) for s, groups in jobs]
        futures = [layers.submit(lay_out, i, decoded[i]) for i in range(len(jobs))]
        del decoded  # each piece is freed once laid out
        try:
            for future in futures:
                future.result()
            pairs.finish()
        except CtstoreError as exc:
            for future in futures:
                future.cancel()
            if isinstance(exc, LayoutMismatch):
                raise CtstoreError(f"{damaged} (damaged artifact: ctstore verify)") from None
            raise
    return pairs, unigram


def warm_up(n_vocab: int, lags: int, head: int | None) -> threading.Thread:
    """Start loading the compiled kernels (numba's cached machine code, ~0.4 s) and zarr's codecs on a thread,
    so that the corpus is read meanwhile: a tiny count through both kernels with the real dtypes."""

    def run():
        from ..formats.counts import compressors

        rng = np.random.default_rng(0)
        V = n_vocab
        H = min(V, HEAD_CHOICES[1] if head is None else max(0, int(head)))
        values = rng.integers(0, min(V, 2 * H + 8), 4 * H + 64).astype(np.uint32)
        offsets = np.array([0, values.size // 2, values.size], np.int64)
        try:
            pairs = ChunkPairs(values, offsets, V, lags, head=H)
            for _ in fused.count_all_lags(pairs, 1):
                pass
            pairs.tail_in_stream_order()
            pairs.lag(1)
            compressors()
        except Exception:  # noqa: BLE001 - only a warm-up: the count itself reports any error
            pass

    thread = threading.Thread(target=run, name="ctstore-warm-up", daemon=True)
    thread.start()
    return thread
