"""The ``tokens`` artifact format: Parquet shards of documents (docs/design.md §2).

Each shard ``part-NNNNN.parquet`` has columns ``doc_id: uint64`` and
``tokens: large_list<uint32>``, zstd-compressed, row groups of about
``ROW_GROUP_TOKENS`` tokens; shards roll over at ``shard_tokens`` tokens
(default 32M tokens, about 128 MB of ids). The manifest lists every shard with
its documents, tokens and per-row-group token counts, so later stages plan
their tasks without opening a file. ``unigram.npy`` beside the manifest holds
the token counts (uint64, length ``n_vocab``).

Writers: :class:`TokensWriter` writes every file of the artifact (shards and
``unigram.npy``) and returns the manifest's description of them; it is what
``tokenize`` and ``synth`` use. :class:`ShardWriter` is its Parquet half.
Readers (:class:`TokenShards`, :func:`read_shard`) get flat arrays (``values``
uint32, ``offsets`` int64 document starts) straight from Arrow buffers: no
Python lists of tokens anywhere. Everything is opened through a
:class:`~ctstore.location.Location`, so a Dask task reads a remote artifact
with the workspace's storage options.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CtstoreError
from ..integrity import check_regular_files  # shard names come from the manifest: no link, FIFO, device
from ..location import Location
from . import require
from .npy import load_npy, save_npy

__all__ = ["TokensWriter", "ShardWriter", "TokenShards", "read_shard", "read_doc_ids", "read_unigram", "SCHEMA",
           "ROW_GROUP_TOKENS", "DEFAULT_SHARD_TOKENS", "FORMAT_VERSION"]

FORMAT_VERSION = 1
ROW_GROUP_TOKENS = 1 << 20
COUNT_TOKENS = 1 << 20  # ids gathered before one bincount into the unigram
DEFAULT_SHARD_TOKENS = 32 << 20
SCHEMA = pa.schema([("doc_id", pa.uint64()), ("tokens", pa.large_list(pa.uint32()))])
UNIGRAM = "unigram.npy"


def _arrow(values: np.ndarray, dtype: pa.DataType) -> pa.Array:
    """A numpy array as an Arrow array of ``dtype`` over the same buffer (no copy, no nulls).

    ``pa.array`` on a numpy array imports pandas on first use (pyarrow checks for
    pandas objects), 0.2-0.3 s of every ``tokenize``; wrapping the buffer does not.
    """
    values = np.ascontiguousarray(values, dtype=dtype.to_pandas_dtype())
    return pa.Array.from_buffers(dtype, len(values), [None, pa.py_buffer(values)])


class TokensWriter:
    """Write a tokens artifact's files at ``location``: Parquet shards and ``unigram.npy``.

    Documents go in through :meth:`add` (whole documents) or :meth:`add_pieces`
    (documents arriving in parts); every id is counted into the unigram on the
    way. :meth:`close` writes the rest and returns the manifest's part that
    describes the files: ``format_version``, ``n_vocab``, ``docs``, ``tokens``
    and the shard table.
    """

    def __init__(self, location: Location, n_vocab: int, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                 max_doc_tokens: int | None = None):
        self.location, self.n_vocab = location, n_vocab
        self.shard_writer = ShardWriter(location, shard_tokens=shard_tokens, max_doc_tokens=max_doc_tokens)
        self.unigram = np.zeros(n_vocab, dtype=np.int64)
        self.tokens = 0
        self._uncounted: list[np.ndarray] = []  # ids not yet in the unigram (counted per COUNT_TOKENS)
        self._uncounted_tokens = 0

    @property
    def split_docs(self) -> int:
        """Documents stored as several because they reached ``max_doc_tokens`` (see :class:`ShardWriter`)."""
        return self.shard_writer.split_docs

    def _count(self, values: np.ndarray) -> None:
        # one bincount per COUNT_TOKENS ids, not per batch: each call allocates and adds a whole
        # n_vocab-long array (0.8 MB at cl100k), which cost tokenize 4% of its CPU with ~70K-token batches
        self.tokens += int(values.size)
        self._uncounted.append(values)
        self._uncounted_tokens += int(values.size)
        if self._uncounted_tokens >= COUNT_TOKENS:
            self._flush_count()

    def _flush_count(self) -> None:
        if self._uncounted:
            values = np.concatenate(self._uncounted) if len(self._uncounted) > 1 else self._uncounted[0]
            self.unigram += np.bincount(values, minlength=self.n_vocab)
        self._uncounted, self._uncounted_tokens = [], 0

    def add(self, values: np.ndarray, lengths: np.ndarray) -> None:
        self._count(values)
        self.shard_writer.add(values, lengths)

    def add_pieces(self, values: np.ndarray, lengths: np.ndarray, ends: np.ndarray) -> None:
        self._count(values)
        self.shard_writer.add_pieces(values, lengths, ends)

    def close(self) -> dict:
        shards = self.shard_writer.close()
        self._flush_count()
        save_npy(self.location.child(UNIGRAM), self.unigram.astype(np.uint64))
        return {"format_version": FORMAT_VERSION, "n_vocab": self.n_vocab,
                "docs": sum(s["docs"] for s in shards), "tokens": self.tokens, "shards": shards}


class ShardWriter:
    """Append documents (flat ids + offsets) and write Parquet shards under ``location``.

    Documents are never split across row groups or shards, so a reader of one
    row group sees whole documents.
    """

    def __init__(self, location: Location, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                 row_group_tokens: int = ROW_GROUP_TOKENS, max_doc_tokens: int | None = None):
        self.location = location
        self.max_doc_tokens = max_doc_tokens
        self.split_docs = 0  # documents ended early (at a piece boundary) because they reached max_doc_tokens
        self.shard_tokens, self.row_group_tokens = shard_tokens, min(row_group_tokens, shard_tokens)
        self.shards: list[dict] = []
        self._writer = None
        self._file = None
        # complete documents waiting for the next row group: (doc ids, token-id arrays, lengths)
        self._pending: list[tuple[np.ndarray, list[np.ndarray], np.ndarray]] = []
        self._pending_tokens = 0
        self._open: list[np.ndarray] = []  # pieces of a document whose end has not been added yet
        self.open_tokens = 0
        self._next_doc = 0

    def add(self, values: np.ndarray, lengths: np.ndarray) -> None:
        """Add a batch of documents given as concatenated ids and per-document lengths."""
        self._add_docs([np.asarray(values, dtype=np.uint32)], np.asarray(lengths, dtype=np.int64))
        self._maybe_flush()

    def add_pieces(self, values: np.ndarray, lengths: np.ndarray, ends: np.ndarray) -> None:
        """Add pieces of documents: ``lengths[i]`` ids each, ``ends[i]`` when piece i ends its document.

        A document may arrive in pieces over several calls (a long document
        tokenized in parts); it is still written whole, in one row group, unless
        it reaches ``max_doc_tokens``: then it is stored as several consecutive
        documents, cut at piece boundaries (counted in ``split_docs``).
        """
        values = np.asarray(values, dtype=np.uint32)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        stops = offsets[np.flatnonzero(np.asarray(ends, dtype=bool)) + 1]  # where each completed document stops
        if stops.size:
            doc_lengths = np.diff(stops, prepend=0)
            doc_lengths[0] += self.open_tokens
            parts, self._open, self.open_tokens = self._open, [], 0
            parts.append(values[: stops[-1]])
            self._add_docs(parts, doc_lengths)
            del parts
            self._maybe_flush()
        tail = values[stops[-1] if stops.size else 0:]
        if tail.size:
            self._open.append(tail)
            self.open_tokens += int(tail.size)
            if self.open_tokens >= self.row_group_tokens and self._pending:
                self._flush_row_group()  # a long document gets a row group of its own
            if self.max_doc_tokens is not None and self.open_tokens >= self.max_doc_tokens:
                parts, self._open = self._open, []
                self._add_docs(parts, np.array([self.open_tokens], dtype=np.int64))
                del parts
                self.open_tokens = 0
                self.split_docs += 1
                self._flush_row_group()

    def _add_docs(self, parts: list[np.ndarray], lengths: np.ndarray) -> None:
        keep = lengths > 0
        if not keep.all():
            lengths = lengths[keep]
        if len(lengths) == 0:
            return
        doc_ids = np.arange(self._next_doc, self._next_doc + len(lengths), dtype=np.uint64)
        self._next_doc += len(lengths)
        self._pending.append((doc_ids, parts, lengths.astype(np.int64)))
        self._pending_tokens += int(lengths.sum())

    def _maybe_flush(self) -> None:
        if self._pending_tokens >= self.row_group_tokens:
            self._flush_row_group()

    def _flush_row_group(self) -> None:
        if not self._pending:
            return
        doc_ids = np.concatenate([p[0] for p in self._pending])
        lengths = np.concatenate([p[2] for p in self._pending])
        parts = [a for p in self._pending for a in p[1]]
        self._pending, self._pending_tokens = [], 0
        values = parts[0] if len(parts) == 1 else np.concatenate(parts)
        del parts  # the pieces of a long document are freed before Arrow encodes the row group
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = pa.LargeListArray.from_arrays(_arrow(offsets, pa.int64()), _arrow(values, pa.uint32()))
        table = pa.Table.from_arrays([_arrow(doc_ids, pa.uint64()), tokens], schema=SCHEMA)
        if self._writer is None:
            name = f"part-{len(self.shards):05d}.parquet"
            self._file = self.location.child(name).open("wb")
            self._writer = pq.ParquetWriter(self._file, SCHEMA, compression="zstd")
            self.shards.append({"name": name, "docs": 0, "tokens": 0, "row_groups": []})
        self._writer.write_table(table, row_group_size=len(table))
        shard = self.shards[-1]
        shard["docs"] += len(lengths)
        shard["tokens"] += int(values.size)
        shard["row_groups"].append(int(values.size))
        if shard["tokens"] >= self.shard_tokens:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._file.close()
            self._writer = self._file = None

    def close(self) -> list[dict]:
        if self._open:  # a document still open at the end is complete
            self.add_pieces(np.empty(0, np.uint32), np.zeros(1, np.int64), np.ones(1, bool))
        self._flush_row_group()
        self._close_shard()
        return self.shards


@dataclass(frozen=True)
class TokenShards:
    """Read access to a tokens artifact: its location and the manifest's shard table."""

    location: Location
    n_vocab: int
    shards: tuple

    @classmethod
    def from_artifact(cls, artifact) -> "TokenShards":
        m = artifact.manifest
        require(artifact, "tokens")
        check_regular_files(artifact.location, [s["name"] for s in m["shards"]])
        return cls(artifact.location, int(m["n_vocab"]), tuple(m["shards"]))

    @property
    def url(self) -> str:
        return self.location.url

    @property
    def n_tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards)

    def shard(self, index: int) -> Location:
        """The Parquet file of shard ``index``."""
        return self.location.child(self.shards[index]["name"])

    def read(self, shard: int, row_groups: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(values uint32, offsets int64)`` of whole documents in the given row groups."""
        return read_shard(self.shard(shard), row_groups)


def _read_column(shard: Location, column: str, row_groups: list[int] | None) -> pa.ChunkedArray:
    try:
        with shard.open("rb") as f:
            pf = pq.ParquetFile(f)
            table = pf.read_row_groups(row_groups, columns=[column]) if row_groups is not None \
                else pf.read(columns=[column])
    except (OSError, pa.ArrowException) as exc:
        raise CtstoreError(f"{shard}: cannot read token shard ({exc})") from None
    return table.column(column)


def read_shard(shard: Location, row_groups: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(values uint32, offsets int64)`` of the documents in ``row_groups`` (None: all) of one shard."""
    column = _read_column(shard, "tokens", row_groups).combine_chunks()
    if not pa.types.is_large_list(column.type) or column.type.value_type != pa.uint32():
        raise CtstoreError(f"{shard}: column 'tokens' has type {column.type}, expected large_list<uint32>")
    if column.null_count or column.values.null_count:
        raise CtstoreError(f"{shard}: column 'tokens' holds nulls")
    offsets = _numpy_view(column.offsets, np.int64)
    values = _numpy_view(column.values, np.uint32)[offsets[0]:offsets[-1]]
    return values, offsets - offsets[0]


def _numpy_view(array: pa.Array, dtype) -> np.ndarray:
    """A read-only numpy view of a null-free primitive Arrow array. ``Array.to_numpy`` imports pandas
    (0.18 s of a count's start-up, on the reading thread); the data buffer is all it needs."""
    itemsize = np.dtype(dtype).itemsize
    return np.frombuffer(array.buffers()[1], dtype, count=len(array), offset=array.offset * itemsize)


def read_doc_ids(shard: Location, row_groups: list[int] | None = None) -> np.ndarray:
    """The ``doc_id`` of each document in ``row_groups`` (None: all) of one shard."""
    column = _read_column(shard, "doc_id", row_groups).combine_chunks()
    if column.type != pa.uint64() or column.null_count:
        raise CtstoreError(f"{shard}: column 'doc_id' has type {column.type} or nulls, expected uint64")
    return _numpy_view(column, np.uint64)


def read_unigram(artifact) -> np.ndarray:
    """The token counts ``unigram.npy`` of a tokens artifact (uint64, length ``n_vocab``)."""
    return load_npy(artifact.location.child(UNIGRAM))
