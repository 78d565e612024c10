"""The pair kernel of ``count``: one chunk of documents → lag-k pair counts as CSR, lag by lag.

Tokens of a chunk are laid out with ``lags`` separator slots (value V) after every
document, so that no lag-k pair crosses a document without a per-lag mask. Pairs
whose two tokens are both among the H most frequent ids of the chunk (the "head",
H chosen by :func:`choose_head` from a cost model) are counted in a dense uint32
(H+1)² table; pairs with a rarer token (the "tail") are partitioned by row, reduced
per row with a dense accumulator and merged with the table's rows into CSR. The
loops that touch every token are compiled (:mod:`.loops`, numba, GIL released, so
lags run on threads) and use per-thread scratch (:class:`HeadWork`) allocated once
and reused across lags: no fresh arrays in the hot loops.

Both engines (:mod:`.onepass`, :mod:`.mapreduce`) read their chunks with
:func:`read_chunk` and run this kernel; no I/O happens here otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ..errors import CtstoreError, write_error
from ..formats.tokens import read_doc_ids, read_shard
from ..location import Location
from ..split import train_documents

if TYPE_CHECKING:
    from .onepass import _MemoryGate

HEAD_CHOICES = (0, 256, 512, 1024, 2048, 4096)
# cost model for choosing H: ns per pair of one lag in the compiled loops (measured on the shared corpora x40,
# min of repeated runs). Every pair goes through the head table (no branch), at a cost that grows once the
# (H+1)² uint32 table outgrows the caches (L2 1 MB per core, L3 32 MB shared here); a pair with a tail token
# also goes through the tail's buckets.
HEAD_NS_PER_PAIR = {0: 0.0, 256: 2.2, 512: 2.2, 1024: 2.6, 2048: 5.5, 4096: 8.5}
TAIL_NS_PER_PAIR = 12.0
HEAD_NS_PER_BIN = 1.0  # per lag: two scans of the table for its non-zeros, and zeroing


def _loops():
    """The compiled loops (:mod:`.loops`), imported when a count first needs them: numba loads only then."""
    from . import loops

    return loops


def choose_head(unigram: np.ndarray, n_pairs: int, max_head: int = HEAD_CHOICES[-1], lags: int = 1) -> int:
    """Number of most frequent ids to count densely, from a simple cost model (``HEAD_NS_PER_PAIR``).

    With a fraction ``c`` of tokens in the head, about ``1 - c²`` of the ``n_pairs``
    pairs have a tail token (independence approximation); the table costs ``(H+1)²``
    bins per lag whatever the input.
    """
    total = int(unigram.sum())
    if total == 0 or n_pairs == 0:
        return 0
    top = np.sort(unigram)[::-1]
    cum = np.cumsum(top, dtype=np.float64) / total
    best, best_cost = 0, n_pairs * TAIL_NS_PER_PAIR
    for h in HEAD_CHOICES[1:]:
        if h > max_head:
            continue
        cov = cum[min(h, unigram.size) - 1]
        cost = (n_pairs * (HEAD_NS_PER_PAIR[h] + (1 - cov * cov) * TAIL_NS_PER_PAIR)
                + lags * (min(h, unigram.size) + 1) ** 2 * HEAD_NS_PER_BIN)
        if cost < best_cost:
            best, best_cost = min(h, unigram.size), cost
    return best


ENTRY_BYTES = 8  # per entry of a lag's CSR: int32 column, uint32 count


class HeadWork:
    """Per-thread scratch of :meth:`ChunkPairs.lag`, allocated once and reused across lags.

    ``table``: the dense (H+1)² uint32 head table; ``acc``: a dense accumulator over V
    (both zero between lags); the rest holds the tail pairs while they are bucketed by
    row and reduced (see :func:`.loops.lag_csr`).
    """

    def __init__(self, head: int, n_vocab: int, tail_pairs: int):
        from .loops import ROW_BITS

        self.table = np.zeros((head + 1) ** 2, np.uint32)
        self.acc = np.zeros(n_vocab, np.uint32)
        self.bucket_start = np.empty((n_vocab >> ROW_BITS) + 3, np.int64)
        self.local = np.empty((1 << ROW_BITS) + 2, np.int64)
        self.row_start = np.empty(n_vocab, np.int64)
        self.row_len = np.empty(n_vocab, np.int32)
        self.pairs = np.empty(tail_pairs, np.uint64)
        self.cols = np.empty(tail_pairs, np.int32)
        self.sort_tmp = np.empty(n_vocab, np.int32)
        self.digit_count = np.empty(256, np.int64)

    @staticmethod
    def nbytes(head: int, n_vocab: int, tail_pairs: int) -> int:
        return 4 * (head + 1) ** 2 + 21 * n_vocab + 12 * tail_pairs + 16384

    def arrays(self) -> tuple:
        return (self.table, self.bucket_start, self.local, self.row_start, self.row_len, self.acc, self.pairs,
                self.cols, self.sort_tmp, self.digit_count)


class LayoutMismatch(CtstoreError):
    """The documents laid out into a :class:`ChunkPairs` disagree with the unigram or document count it was
    sized for."""


class ChunkPairs:
    """Lag-k pair counts of one chunk of documents, lag by lag (compiled loops in :mod:`.loops`).

    ``values`` are concatenated token ids, ``offsets`` document boundaries. ``head``
    overrides the number of densely counted ids (None: :func:`choose_head`);
    ``unigram`` (counts of ``values``), when the caller has it, saves a pass.
    """

    def __init__(self, values: np.ndarray, offsets: np.ndarray, n_vocab: int, lags: int,
                 head: int | None = None, max_head: int = HEAD_CHOICES[-1], unigram: np.ndarray | None = None):
        if unigram is None:
            _check_piece(values, offsets, n_vocab)
            unigram = _loops().unigram_counts(values, n_vocab)
        self._allocate(n_vocab, lags, unigram, int(offsets.size) - 1, head, max_head)
        self.append(values, offsets)
        self.finish()

    @classmethod
    def empty(cls, n_vocab: int, lags: int, unigram: np.ndarray, docs: int, head: int | None = None,
              max_head: int = HEAD_CHOICES[-1]) -> "ChunkPairs":
        """The arrays of a chunk of ``docs`` documents whose token counts are ``unigram``, to be filled in
        order by :meth:`append` (e.g. as pieces of the corpus are read) and checked by :meth:`finish`."""
        pairs = cls.__new__(cls)
        pairs._allocate(n_vocab, lags, unigram, docs, head, max_head)
        return pairs

    def _allocate(self, n_vocab: int, lags: int, unigram: np.ndarray, docs: int, head: int | None,
                  max_head: int) -> None:
        V = n_vocab
        if unigram.shape != (V,):
            raise CtstoreError(f"the unigram given for a count chunk has shape {unigram.shape}, not ({V},)")
        n = int(unigram.sum())
        m = n + lags * docs
        if m >= 2**31 - 1:
            raise CtstoreError(f"a count chunk of {n} tokens in {docs} documents exceeds 2^31 slots")
        if docs < 0 or (n and not docs):
            raise CtstoreError(f"count chunk: {n} tokens in {docs} documents")
        self.n_vocab, self.lags, self.size = V, lags, m
        self.head = H = min(V, choose_head(unigram, n * lags, max_head, lags) if head is None else max(0, int(head)))
        # head ids in ascending id order: a head row of the table lists its columns in id order
        head_ids = np.sort(np.argpartition(unigram, V - H)[V - H:]) if 0 < H < V else np.arange(H)
        self.head_ids = head_ids.astype(np.int32)
        code_dtype = np.int16 if H < 2**15 - 1 else np.int32
        self.head_code = np.full(V + 1, H, dtype=code_dtype)  # H: a tail id, or the separator V
        self.head_code[self.head_ids] = np.arange(H, dtype=code_dtype)
        # tail positions grouped by id (tail_start[id]..tail_start[id + 1]): the all-lags kernel walks them by row
        tail_counts = unigram.astype(np.int64)
        tail_counts[self.head_ids] = 0
        self.tail_start = np.zeros(V + 1, np.int64)
        np.cumsum(tail_counts, out=self.tail_start[1:])
        n_tail = int(self.tail_start[-1])
        self.max_tail_count = int(tail_counts.max()) if V else 0
        del tail_counts
        self.stream = np.empty(m, np.int32)
        self.code = np.empty(m, code_dtype)
        self.tail_pos = np.empty(n_tail, np.int32)
        # each pair with a tail token is found once from it: at most two per tail token
        self.tail_pairs = min(m, 2 * n_tail)
        self.tail_by_id = True
        # filling state (claim / fill / finish)
        self._unigram, self._seen = unigram, np.zeros(V, np.uint64)
        self._cursor, self._at = self.tail_start[:-1].copy(), 0
        self._is_tail = self.head_code[:V] == H

    def append(self, values: np.ndarray, offsets: np.ndarray) -> None:
        """Lay out the next documents (``values`` uint32 ids, ``offsets`` int64 boundaries from 0)."""
        _check_piece(values, offsets, self.n_vocab)
        start, cursor = self.claim(_loops().unigram_counts(values, self.n_vocab), int(offsets.size) - 1)
        self.fill(values, offsets, start, cursor)

    def claim(self, unigram: np.ndarray, docs: int) -> tuple[int, np.ndarray]:
        """The slots of the next piece of documents, of token counts ``unigram``: ``(start, cursor)`` for
        :meth:`fill`. Claims are made in the pieces' order (one at a time); fills may then run concurrently."""
        n = int(unigram.sum())
        end = self._at + n + self.lags * docs
        if end > self.size:
            raise LayoutMismatch(f"count chunk: more tokens or documents than its unigram and document count make "
                               f"room for ({self.size} slots)")
        start, cursor = self._at, self._cursor.copy()
        self._cursor += unigram.astype(np.int64, copy=False)
        self._seen += unigram
        if bool((self._cursor[self._is_tail] > self.tail_start[1:][self._is_tail]).any()):
            raise LayoutMismatch("count chunk: its tokens do not match the unigram given for it")
        self._at = end
        return start, cursor

    def fill(self, values: np.ndarray, offsets: np.ndarray, start: int, cursor: np.ndarray) -> None:
        """Lay out the piece claimed as ``(start, cursor)`` (checked by :func:`_check_piece`)."""
        end = start + int(values.size) + self.lags * (int(offsets.size) - 1)
        at = _loops().separated_stream(values, np.asarray(offsets, np.int64), self.lags, self.head_code,
                                       self.stream, self.code, self.tail_pos, cursor, self.tail_start[1:], start)
        if at != end:
            raise LayoutMismatch("count chunk: its tokens do not match the unigram given for it")

    def finish(self) -> None:
        """Check that the documents claimed fill the chunk and match its unigram exactly."""
        if self._at != self.size or not np.array_equal(self._seen, self._unigram):
            raise LayoutMismatch("count chunk: its tokens do not match the unigram given for it")
        del self._unigram, self._seen, self._cursor, self._is_tail

    def tail_in_stream_order(self) -> None:
        """Put the tail positions back in stream order, for :meth:`lag`: grouped by id (what the all-lags
        kernel walks), every lag's pass would read the stream at random (synthetic V = 131,072, 20M tokens:
        19.9 vs 12.0 CPU-s whole process, load ~10)."""
        if self.tail_by_id:
            _loops().tail_positions_ascending(self.stream, self.code, self.head, self.n_vocab, self.tail_pos)
            self.tail_by_id = False

    def nbytes(self) -> int:
        """Bytes held by the chunk's arrays (shared by every thread)."""
        return (self.stream.nbytes + self.code.nbytes + self.tail_pos.nbytes + self.head_code.nbytes
                + self.tail_start.nbytes)

    def work(self) -> HeadWork:
        return HeadWork(self.head, self.n_vocab, self.tail_pairs)

    def work_bytes(self) -> int:
        return HeadWork.nbytes(self.head, self.n_vocab, self.tail_pairs)

    def entry_bytes_bound(self) -> int:
        """Upper bound of the memory one :meth:`lag` result takes (its CSR)."""
        return ENTRY_BYTES * min(self.size, self.tail_pairs + self.head * self.head) + 8 * (self.n_vocab + 1)

    def lag(self, lag: int, work: HeadWork | None = None, gate: "_MemoryGate | None" = None,
            sort_cols: bool = True) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], int]:
        """CSR ``(indptr int64, indices int32, counts uint32)`` over V rows for one lag, and the bytes reserved.

        Columns are unique within each row, and sorted unless ``sort_cols`` is False
        (a map task of map/reduce, whose reduce orders them). With a ``gate``, the memory of
        the result is reserved from it first; the caller releases the returned
        reservation when it is done with the arrays.
        """
        need = self.entry_bytes_bound()
        if gate is not None:
            gate.acquire(need)
        try:
            work = work or self.work()
            csr = _loops().lag_csr(self.stream, self.code, self.tail_pos, self.head_ids, self.head_code, lag,
                                   *work.arrays(), sort_cols)
            return csr, need
        except BaseException:
            if gate is not None:
                gate.release(need)
            raise


    def lag_spill(self, lag: int, work: HeadWork, mini_rows: int, count_bits: int) -> tuple[np.ndarray, np.ndarray]:
        """One lag's entries as a map task spills them: ``(index, packed)``, where ``index`` (int64) says where
        each mini-block of ``mini_rows`` rows starts among the ``packed`` uint32 entries (key and count, see
        :func:`.loops.lag_spill`): no CSR in between, columns unsorted."""
        index = np.empty(-(-self.n_vocab // mini_rows) + 1, np.int64)
        packed = _loops().lag_spill(self.stream, self.code, self.tail_pos, self.head_ids, self.head_code, lag,
                                    *work.arrays(), mini_rows, count_bits, index)
        return index, packed


def _check_piece(values: np.ndarray, offsets: np.ndarray, n_vocab: int) -> None:
    """Ids below ``n_vocab`` and offsets that cover ``values`` in order: the compiled loops check no bounds."""
    n, docs = int(values.size), int(offsets.size) - 1
    if docs < 0 or (docs and (int(offsets[0]) != 0 or int(offsets[-1]) != n)) or (n and not docs) \
            or (docs and bool((np.diff(offsets) < 0).any())):
        raise CtstoreError(f"count chunk: offsets do not cover its {n} tokens")
    if n and int(values.max()) >= n_vocab:
        raise CtstoreError(f"count chunk: token id {int(values.max())} >= vocabulary {n_vocab}")


# ---------------------------------------------------------------------------------------
# reading a chunk


def read_chunk(shard: Location, row_groups: list, n_vocab: int, val_fraction: float | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Whole documents of some row groups of a token shard: ``(values uint32, offsets int64)``, ids checked.

    With ``val_fraction``, the validation documents of :mod:`ctstore.split` are left out.
    """
    values, offsets = read_shard(shard, row_groups)
    if val_fraction is not None:
        values, offsets = train_documents(values, offsets, read_doc_ids(shard, row_groups), val_fraction)
    pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed decoding buffers otherwise
    if values.size and int(values.max()) >= n_vocab:
        raise CtstoreError(f"{shard}: token id {int(values.max())} >= declared vocabulary {n_vocab}")
    return values, offsets


def _write_error(path: str, what: str, exc: OSError) -> CtstoreError:
    """:func:`ctstore.errors.write_error` as a plain CtstoreError: a count keeps its spills to resume from."""
    return CtstoreError(str(write_error(path, what, exc)))
