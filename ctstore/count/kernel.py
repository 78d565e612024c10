"""The pair kernel of ``count``: one chunk of documents → lag-k pair counts as CSR, lag by lag.

Tokens of a chunk are laid out with ``lags`` separator slots (value V) after every
document, so that no lag-k pair crosses a document without a per-lag mask. Pairs
whose two tokens are both among the H most frequent ids of the chunk (the "head",
H chosen by :func:`choose_head` from a cost model) are counted in a dense uint32
(H+1)² table reused across lags; pairs with a rarer token (the "tail") are gathered
from the tail positions and merged with the head's non-zeros by a two-pass counting
sort (columns, then rows: stable, linear, no comparison sort), duplicates summed
(:func:`csr_from_pairs`). On this machine np.sort of uint64 keys runs at ~15M/s per
core, the two counting passes at ~40M/s and the dense table at ~130-230M/s.

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
TAIL_NS_PER_PAIR = 30.0  # cost model for choosing H: a tail pair through the counting sort
HEAD_NS_PER_PAIR = 8.0  # a head pair through multiply-add + bincount
HEAD_NS_PER_BIN = 2.0  # allocate, zero and scan one bin of the dense table


def choose_head(unigram: np.ndarray, n_pairs: int, max_head: int = HEAD_CHOICES[-1]) -> int:
    """Number of most frequent ids to count densely, from a simple cost model.

    With a fraction ``c`` of tokens in the head, about ``c²`` of the pairs fall there
    (independence approximation); the table costs ``(H+1)²`` bins whatever the input.
    """
    total = int(unigram.sum())
    if total == 0 or n_pairs == 0:
        return 0
    top = np.sort(unigram)[::-1]
    cum = np.cumsum(top, dtype=np.float64) / total
    best, best_gain = 0, 0.0
    for h in HEAD_CHOICES:
        h = min(h, unigram.size)
        if h == 0 or h > max_head:
            continue
        cov = cum[h - 1]
        gain = n_pairs * cov * cov * (TAIL_NS_PER_PAIR - HEAD_NS_PER_PAIR) - (h + 1) ** 2 * HEAD_NS_PER_BIN
        if gain > best_gain:
            best, best_gain = h, gain
    return best


def csr_from_pairs(parts: list, n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR with sorted, unique column indices per row and summed data for ``parts = [rows, cols, data]``.

    Two stable counting passes (by column, then by row) instead of a comparison sort;
    index arrays are int32 (every chunk and block holds < 2^31 entries). ``parts`` is
    emptied, so the inputs are freed as soon as the first pass has copied them.
    """
    rows, cols, data = parts
    parts.clear()
    n = rows.size
    if n >= 2**31 - 1:
        raise CtstoreError(f"a count block of {n} entries exceeds 2^31")
    rows = np.asarray(rows, dtype=np.int32)
    cols = np.asarray(cols, dtype=np.int32)
    try:
        from scipy.sparse._sparsetools import coo_tocsr, csr_sum_duplicates
    except ImportError:  # private scipy module moved: the public path does the same, slower
        import scipy.sparse as sp

        m = sp.csr_matrix((data, (rows, cols)), shape=(n_rows, n_cols))
        m.sum_duplicates()
        return m.indptr.astype(np.int64), m.indices.astype(np.int32), m.data
    by_col_ptr = np.empty(n_cols + 1, np.int32)
    by_col_rows = np.empty(n, np.int32)
    by_col_data = np.empty(n, data.dtype)
    coo_tocsr(n_cols, n_rows, n, cols, rows, data, by_col_ptr, by_col_rows, by_col_data)
    del rows, cols, data
    col_of = np.repeat(np.arange(n_cols, dtype=np.int32), np.diff(by_col_ptr))
    del by_col_ptr
    indptr = np.empty(n_rows + 1, np.int32)
    indices = np.empty(n, np.int32)
    values = np.empty(n, by_col_data.dtype)
    coo_tocsr(n_rows, n_cols, n, by_col_rows, col_of, by_col_data, indptr, indices, values)
    del by_col_rows, col_of, by_col_data
    csr_sum_duplicates(n_rows, n_cols, indptr, indices, values)  # in place: compacts and updates indptr
    nnz = int(indptr[-1])
    return indptr.astype(np.int64), indices[:nnz], values[:nnz]


HEAD_PIECE = 1 << 22  # positions per np.add.at call into the dense table (a 16 MB int32 buffer)
ENTRY_BYTES = 24  # per pair entering csr_from_pairs: gathered pairs, both counting passes


class HeadWork:
    """Per-thread scratch for the dense head: a uint32 (H+1)² table and an index buffer, reused across lags.

    ``np.add.at`` on a uint32 table with int32 indices measured faster here than
    ``np.bincount`` (which allocates and zero-fills a fresh int64 table per call).
    """

    def __init__(self, head: int, size: int):
        self.table = np.zeros((head + 1) ** 2, np.uint32) if head else None
        self.buffer = np.empty(min(size, HEAD_PIECE), np.int32) if head else None

    @staticmethod
    def nbytes(head: int, size: int) -> int:
        return 4 * (head + 1) ** 2 + 4 * min(size, HEAD_PIECE) if head else 0


class ChunkPairs:
    """Lag-k pair counts of one chunk of documents, lag by lag.

    ``values`` are concatenated token ids, ``offsets`` document boundaries. ``head``
    overrides the number of densely counted ids (None: :func:`choose_head`).
    """

    def __init__(self, values: np.ndarray, offsets: np.ndarray, n_vocab: int, lags: int,
                 head: int | None = None, max_head: int = HEAD_CHOICES[-1], unigram: np.ndarray | None = None):
        V = n_vocab
        n = int(values.size)
        lengths = np.diff(offsets)
        docs = lengths.size
        m = n + lags * docs
        if m >= 2**31 - 1:
            raise CtstoreError(f"a count chunk of {n} tokens in {docs} documents exceeds 2^31 slots")
        self.n_vocab, self.lags, self.size = V, lags, m
        if unigram is None:
            unigram = np.bincount(values, minlength=V)
        self.head = min(V, choose_head(unigram, n * lags, max_head) if head is None else max(0, int(head)))
        H = self.head
        # slot of token i: i + lags · (its document index); separators hold V
        slot = np.repeat(np.arange(0, docs * lags, lags, dtype=np.int32), lengths)
        slot += np.arange(n, dtype=np.int32)
        self.stream = np.full(m, V, dtype=np.int32)
        self.stream[slot] = values
        del slot
        # head ids in ascending id order: the dense table's row-major non-zeros come out sorted
        head_ids = np.sort(np.argpartition(unigram, V - H)[V - H:]) if 0 < H < V else np.arange(H)
        self.head_ids = head_ids.astype(np.int32)
        code_dtype = np.int16 if H < 2**15 - 1 else np.int32
        table = np.full(V + 1, H, dtype=code_dtype)  # H: tail or separator
        table[self.head_ids] = np.arange(H, dtype=code_dtype)
        self.code = table[self.stream]
        tail = self.code == H
        tail &= self.stream != V
        self.tail_pos = np.flatnonzero(tail).astype(np.int32)
        del tail, table

    def work(self) -> HeadWork:
        return HeadWork(self.head, self.size)

    def entry_bytes_bound(self) -> int:
        """Upper bound of the memory one :meth:`lag` call needs beyond its :class:`HeadWork`."""
        tail_pairs = min(self.size, 2 * self.tail_pos.size)
        head_nz = min(self.head * self.head, self.size)
        return ENTRY_BYTES * (tail_pairs + head_nz) + 16 * (self.n_vocab + 1)

    def head_entries(self, lag: int, work: HeadWork) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols, counts) of the head pairs at ``lag``, rows/cols as token ids, sorted."""
        H, m = self.head, self.size
        if H == 0 or m <= lag:
            return np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.uint32)
        table, one = work.table, np.uint32(1)
        for lo in range(0, m - lag, work.buffer.size):
            hi = min(m - lag, lo + work.buffer.size)
            buf = work.buffer[: hi - lo]
            np.multiply(self.code[lo:hi], H + 1, out=buf, dtype=np.int32)
            np.add(buf, self.code[lo + lag: hi + lag], out=buf, dtype=np.int32)
            np.add.at(table, buf, one)
        square = table.reshape(H + 1, H + 1)
        square[H, :] = 0  # pairs with a tail token or a separator
        square[:, H] = 0
        flat = np.flatnonzero(table)
        counts = table[flat]
        table[flat] = 0  # ready for the next lag
        flat = flat.astype(np.int32)
        return self.head_ids[flat // (H + 1)], self.head_ids[flat % (H + 1)], counts

    def tail_entries(self, lag: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of every pair at ``lag`` with at least one tail token (each pair once)."""
        V, H, m, s, t = self.n_vocab, self.head, self.size, self.stream, self.tail_pos
        left = t[: int(np.searchsorted(t, m - lag))]
        partner = s[left + lag]
        keep = partner != V
        a_left, b_left = s[left[keep]], partner[keep]
        del partner, keep
        right = t[int(np.searchsorted(t, lag)):] - lag
        right = right[self.code[right] < H]  # a head token before a tail token (tail-tail pairs are in left)
        a_right, b_right = s[right], s[right + lag]
        return np.concatenate([a_left, a_right]), np.concatenate([b_left, b_right])

    def lag(self, lag: int, work: HeadWork | None = None, gate: "_MemoryGate | None" = None
            ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], int]:
        """CSR ``(indptr int64, indices int32, counts uint32)`` over V rows for one lag, and the bytes reserved.

        With a ``gate``, the memory of the sparse part (known once the head's non-zeros
        are) is reserved from it first; the caller releases the returned reservation
        when it is done with the arrays.
        """
        hr, hc, hx = self.head_entries(lag, work or self.work())
        need = ENTRY_BYTES * (min(self.size, 2 * self.tail_pos.size) + hr.size) + 16 * (self.n_vocab + 1)
        if gate is not None:
            gate.acquire(need)
        try:
            tr, tc = self.tail_entries(lag)
            parts = [np.concatenate([tr, hr]), np.concatenate([tc, hc]),
                     np.concatenate([np.ones(tr.size, np.uint32), hx])]
            del hr, hc, hx, tr, tc
            return csr_from_pairs(parts, self.n_vocab, self.n_vocab), need
        except BaseException:
            if gate is not None:
                gate.release(need)
            raise


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
