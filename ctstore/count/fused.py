"""All lags of a chunk at once: one pass over the tail tokens per group of lags, one head pass per lag.

Drives :mod:`.fused_loops` for both engines. A chunk's lags are counted in groups
(all lags at once unless their tail entries outgrow the memory left: see
:func:`count_all_lags`); for each group:

1. **tail** (:func:`tail_entries`, on threads, each a range of tail ids of about the
   same number of occurrences): one pass over the tail occurrences grouped by id,
   reading the window of ``L`` slots either side once for every lag of the group;
   each range's entries are copied out compactly in blocks of at most ``cap``
   occurrences (the per-thread buffers of :class:`TailWork`, reused);
2. **lags** (:func:`lag_csr`, on threads, one task per lag): one streaming pass over
   the 2-byte head codes into the thread's dense table, then the lag's CSR built from
   the table and the tail entries.

The result of every lag is identical to :meth:`.kernel.ChunkPairs.lag` (tests check
both against a pure-Python reference).
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from .kernel import ChunkPairs

BLOCK_OCCURRENCES = 1 << 18  # tail occurrences per block of a thread's output buffers (20 B each per lag)
TAIL_ENTRY_BYTES = 20  # per tail occurrence and lag, at most: column + count (8 B), head row + column + count (12 B)


def _fused():
    from . import fused_loops

    return fused_loops


class TailWork:
    """Per-thread scratch of the tail pass for up to ``g`` lags, allocated once and reused across blocks."""

    def __init__(self, g: int, n_vocab: int, head: int, cap: int, max_count: int = 2**32 - 1):
        self.g, self.cap = g, cap
        # a tail id's pair counts are at most its occurrences: 2-byte accumulators when they fit, half the
        # cache lines (synthetic V = 131,072: 2.6 MB for 10 lags instead of 5.2 MB)
        dtype = np.uint16 if max_count < 2**16 else np.uint32
        self.acc = np.zeros(g * (n_vocab + 1), dtype)
        self.hacc = np.zeros(g * (head + 1), dtype)
        self.t_cols = np.empty(g * cap, np.int32)
        self.t_counts = np.empty(g * cap, np.uint32)
        self.h_rows = np.empty(g * cap, np.int32)
        self.h_cols = np.empty(g * cap, np.int32)
        self.h_counts = np.empty(g * cap, np.uint32)
        self.fill = np.zeros(2 * g, np.int64)
        self.mark = np.zeros(2 * g, np.int64)
        self.sort_tmp = np.empty(n_vocab, np.int32)
        self.digit_count = np.empty(256, np.int64)

    @staticmethod
    def nbytes(g: int, n_vocab: int, head: int, cap: int) -> int:
        return 4 * g * (n_vocab + head + 2) + TAIL_ENTRY_BYTES * g * cap + 4 * n_vocab + 4096


def block_capacity(pairs: ChunkPairs) -> int:
    """Occurrences per block: every tail id's occurrences must fit one block; no more than the chunk has."""
    return max(1, min(BLOCK_OCCURRENCES, int(pairs.tail_pos.size)), pairs.max_tail_count)


def work_bytes(pairs: ChunkPairs, g: int) -> int:
    """Per-thread scratch of both passes for a group of ``g`` lags: head table and :class:`TailWork`."""
    return 4 * (pairs.head + 1) ** 2 + TailWork.nbytes(g, pairs.n_vocab, pairs.head, block_capacity(pairs))


def tail_ranges(pairs: ChunkPairs, parts: int) -> list[tuple[int, int]]:
    """Ranges of ids ``[r0, r1)`` holding about equal numbers of tail occurrences."""
    n = int(pairs.tail_start[-1])
    cuts = np.searchsorted(pairs.tail_start, np.linspace(0, n, parts + 1)[1:-1], side="right")
    bounds = [0, *sorted({min(int(c), pairs.n_vocab) for c in cuts}), pairs.n_vocab]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a] or [(0, pairs.n_vocab)]


@dataclass
class GroupTail:
    """Tail entries of a group of lags: per lag, row lengths (V) and compact pieces in ascending id."""

    k0: int
    k1: int
    row_len: np.ndarray  # (g, V) int32, shared by the ranges (each writes its own ids)
    pieces: list  # [range index][lag j] -> list of (t_cols, t_counts, h_rows, h_cols, h_counts)

    def lag_parts(self, lag: int) -> tuple:
        j = lag - self.k0
        chunks = [piece[j] for pieces in self.pieces for piece in pieces]
        joined = [np.concatenate([c[i] for c in chunks]) if chunks else np.empty(0, dtype)
                  for i, dtype in enumerate((np.int32, np.uint32, np.int32, np.int32, np.uint32))]
        return (self.row_len[j], *joined)

    def nbytes(self) -> int:
        return self.row_len.nbytes + sum(a.nbytes for pieces in self.pieces for piece in pieces
                                         for lag_piece in piece for a in lag_piece)


class _TailBudget:
    """Bytes of tail entries held by a group, shared by its range tasks; over ``allowance``, the group stops."""

    def __init__(self, allowance: int):
        self.allowance, self.used = allowance, 0
        self.lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self.lock:
            self.used += n
            return self.used <= self.allowance


class _GroupTooLarge(Exception):
    pass


def tail_entries(pairs: ChunkPairs, k0: int, k1: int, r0: int, r1: int, work: TailWork, row_len: np.ndarray,
                 budget: _TailBudget | None = None) -> list:
    """Tail entries of lags ``k0..k1-1`` for ids ``[r0, r1)``: a list of blocks, each a list over lags of
    compact ``(t_cols, t_counts, h_rows, h_cols, h_counts)`` copies. Raises :class:`_GroupTooLarge`
    when the group's entries outgrow ``budget``."""
    loops = _fused()
    g = k1 - k0
    V, H = pairs.n_vocab, pairs.head
    cap = work.t_cols.size // g
    t_fill, h_fill = work.fill[:g], work.fill[g:2 * g]
    blocks, r = [], r0
    while r < r1:
        t_fill[:] = 0
        h_fill[:] = 0
        stop = loops.tail_block(pairs.stream, pairs.code, pairs.tail_pos, pairs.tail_start, r, r1, k0, k1,
                                work.acc[:g * (V + 1)], work.hacc[:g * (H + 1)], work.t_cols, work.t_counts, t_fill,
                                work.h_rows, work.h_cols, work.h_counts, h_fill, row_len.reshape(-1),
                                work.mark[:2 * g], work.sort_tmp, work.digit_count)
        if stop == r:
            raise AssertionError(f"tail id {r}: {pairs.tail_start[r + 1] - pairs.tail_start[r]} occurrences "
                                 f"exceed a block of {cap}")
        if budget is not None and not budget.take(8 * int(t_fill.sum()) + 12 * int(h_fill.sum())):
            raise _GroupTooLarge
        block = []
        for j in range(g):
            t, h = slice(j * cap, j * cap + int(t_fill[j])), slice(j * cap, j * cap + int(h_fill[j]))
            block.append((work.t_cols[t].copy(), work.t_counts[t].copy(), work.h_rows[h].copy(),
                          work.h_cols[h].copy(), work.h_counts[h].copy()))
        blocks.append(block)
        r = stop
    return blocks


def lag_csr(pairs: ChunkPairs, lag: int, table: np.ndarray, tail: GroupTail) -> tuple:
    """CSR ``(indptr, indices, counts)`` of one lag: the head pass into ``table``, merged with the tail entries."""
    loops = _fused()
    if pairs.head:
        loops.head_table(pairs.code, lag, table)
    return loops.lag_csr_from_parts(table, pairs.head_ids, pairs.head_code, *tail.lag_parts(lag))


def projected_tail_bytes(pairs: ChunkPairs, work: TailWork, samples: int = 32, fraction: float = 1 / 256) -> float:
    """Bytes of one lag's tail entries, projected from the first lag on ``samples`` slices of ids holding
    ``fraction`` of the tail occurrences, spread over them by occurrences (a few ms; the bound, 20 bytes per
    tail token, is 20x too high on real text, whose frequent tail ids repeat their neighbours)."""
    n = int(pairs.tail_pos.size)
    if n == 0:
        return 0.0
    row_len = np.zeros((1, pairs.n_vocab), np.int32)
    used = seen = 0
    for r0, _ in tail_ranges(pairs, samples):
        want = pairs.tail_start[r0] + max(1, int(n * fraction / samples))
        r1 = int(min(pairs.n_vocab, np.searchsorted(pairs.tail_start, want, side="left")))
        r1 = max(r1, r0 + 1)
        for block in tail_entries(pairs, 1, 2, r0, r1, work, row_len):
            t_cols, _, h_rows, _, _ = block[0]
            used += 8 * t_cols.size + 12 * h_rows.size
        seen += int(pairs.tail_start[r1] - pairs.tail_start[r0])
    return used * n / max(seen, 1)


def _tail_task(pairs, k0, k1, r0, r1, scratch, row_len, budget):
    return tail_entries(pairs, k0, k1, r0, r1, scratch().tail, row_len, budget)


def _lag_task(pairs, lag, scratch, tail):
    return lag_csr(pairs, lag, scratch().table, tail)


def csr_bytes_bound(pairs: ChunkPairs) -> int:
    """Bytes of one lag's CSR beyond its tail entries (already counted in the group): head entries and indptr."""
    return 8 * min(pairs.size, pairs.head * pairs.head) + 8 * (pairs.n_vocab + 1)


def count_all_lags(pairs: ChunkPairs, threads: int = 1, allowance: int | None = None, pool=None,
                   stats: dict | None = None):
    """Yield ``(lag, (indptr, indices, counts))`` for every lag of ``pairs``, in completion order.

    ``threads`` tasks run at a time (on ``pool``, or a pool made here). ``allowance``
    bounds the bytes of tail entries a group of lags holds, counted as they are made
    (None: no bound): the first group tries every lag; a group whose entries outgrow
    it is redone with half as many lags (so real text, whose tail entries are far
    below their bound, takes one pass for all lags). The caller holds one result at a
    time; at most ``threads`` more are in flight. Their memory beyond the tail entries
    is at most ``csr_bytes_bound`` each; their tail entries at most the group's. ``stats``
    (a dict) receives the lag groups, retries and the wall seconds of the tail passes.
    """
    stats = {} if stats is None else stats
    stats.update(groups=[], retries=0, tail_s=0.0)
    L = pairs.lags
    if not pairs.tail_by_id:
        raise ValueError("count_all_lags needs the tail positions grouped by id (a fresh ChunkPairs)")
    cap = block_capacity(pairs)
    local = threading.local()

    def scratch():
        if getattr(local, "tail", None) is None:
            local.tail = TailWork(L, pairs.n_vocab, pairs.head, cap, pairs.max_tail_count)
            local.table = np.zeros((pairs.head + 1) ** 2, np.uint32)
        return local

    own = pool is None
    pool = pool or ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ctstore-count")
    try:
        ranges = tail_ranges(pairs, 4 * threads if threads > 1 else 1)
        k0, g = 1, L
        if allowance is not None:
            # the projection from a sample ran 20-40% low on both benchmark inputs: leave room for 1.5x
            g = max(1, min(L, int(allowance // max(1.0, 1.5 * projected_tail_bytes(pairs, scratch().tail)))))
        while k0 <= L:
            k1 = min(L + 1, k0 + g)
            row_len = np.zeros((k1 - k0, pairs.n_vocab), np.int32)
            budget = _TailBudget(allowance) if allowance is not None and k1 - k0 > 1 else None  # one lag: no less
            started = time.perf_counter()
            futures = [pool.submit(_tail_task, pairs, k0, k1, a, b, scratch, row_len, budget) for a, b in ranges]
            wait(futures)
            stats["tail_s"] += time.perf_counter() - started
            if any(isinstance(f.exception(), _GroupTooLarge) for f in futures) and k1 - k0 > 1:
                del futures, row_len
                g = max(1, (k1 - k0) // 2)
                stats["retries"] += 1
                continue
            stats["groups"].append([k0, k1 - 1])
            tail = GroupTail(k0, k1, row_len, [f.result() for f in futures])
            del futures
            todo = list(range(k0, k1))
            pending = {}
            while todo or pending:
                while todo and len(pending) < threads:
                    lag = todo.pop(0)
                    pending[pool.submit(_lag_task, pairs, lag, scratch, tail)] = lag
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield pending.pop(future), future.result()
            del tail, row_len
            k0 = k1
    finally:
        if own:
            pool.shutdown(wait=True, cancel_futures=True)


def one_group_fits(pairs: ChunkPairs, allowance: int) -> bool:
    """Whether every lag's tail entries, as projected (x1.5), fit ``allowance`` in one group.

    The engines run the all-lags kernel only then: it wins where a tail id's neighbours repeat
    (real text x40: 1 group, 7.2-7.6 vs 7.8-8.6 CPU-s whole process, peak 0.86 vs 1.18 GB) and loses
    where nearly every tail pair is distinct (synthetic V = 131,072, 20M tokens: 2 groups, 14.0 vs
    11.6 CPU-s, peak 1.68 vs 1.16 GB; all at load ~10), where the per-lag kernel stays.
    """
    if pairs.tail_pos.size == 0:
        return True
    work = TailWork(1, pairs.n_vocab, pairs.head, block_capacity(pairs), pairs.max_tail_count)
    return 1.5 * projected_tail_bytes(pairs, work) * pairs.lags <= allowance


def count_lag_by_lag(pairs: ChunkPairs, threads: int, capacity: int):
    """Yield ``(lag, csr)`` from the per-lag kernel (:meth:`ChunkPairs.lag`) on ``threads`` threads, results
    reserved from a gate of ``capacity`` bytes and released once the caller asks for the next one."""
    from .onepass import _MemoryGate

    pairs.tail_in_stream_order()
    gate = _MemoryGate(capacity)
    local = threading.local()

    def one_lag(lag: int):
        if getattr(local, "work", None) is None:
            local.work = pairs.work()
        csr, need = pairs.lag(lag, local.work, gate)
        return [lag, need, csr]  # a list, so the caller can take the arrays out of it

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ctstore-count")
    try:
        pending = {pool.submit(one_lag, lag) for lag in range(1, pairs.lags + 1)}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                result = future.result()
                csr = result.pop()
                lag, need = result
                try:
                    yield lag, csr
                finally:
                    del csr
                    gate.release(need)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
