"""The ``tokens`` artifact format: Parquet shards of documents (docs/design.md §2).

Each shard ``part-NNNNN.parquet`` has columns ``doc_id: uint64`` and
``tokens: large_list<uint32>``, zstd-compressed, row groups of about
``ROW_GROUP_TOKENS`` tokens; shards roll over at ``shard_tokens`` tokens
(default 32M tokens, about 128 MB of ids). The manifest lists every shard with
its documents, tokens and per-row-group token counts, so later stages plan
their tasks without opening a file. ``unigram.npy`` beside the manifest holds
the token counts (uint64, length ``n_vocab``).

Readers get flat arrays (``values`` uint32, ``offsets`` int64 document starts)
straight from Arrow buffers: no Python lists of tokens anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CtstoreError

__all__ = ["ShardWriter", "TokenShards", "SCHEMA", "ROW_GROUP_TOKENS", "DEFAULT_SHARD_TOKENS"]

FORMAT_VERSION = 1
ROW_GROUP_TOKENS = 1 << 20
DEFAULT_SHARD_TOKENS = 32 << 20
SCHEMA = pa.schema([("doc_id", pa.uint64()), ("tokens", pa.large_list(pa.uint32()))])


class ShardWriter:
    """Append documents (flat ids + offsets) and write Parquet shards under ``path``.

    Documents are never split across row groups or shards, so a reader of one
    row group sees whole documents.
    """

    def __init__(self, fs, path: str, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                 row_group_tokens: int = ROW_GROUP_TOKENS, max_doc_tokens: int | None = None):
        self.fs, self.path = fs, path
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

    def add_pieces(self, values: np.ndarray, lengths: np.ndarray, ends: np.ndarray) -> int:
        """Add pieces of documents: ``lengths[i]`` ids each, ``ends[i]`` when piece i ends its document.

        A document may arrive in pieces over several calls (a long document
        tokenized in parts); it is still written whole, in one row group, unless
        it reaches ``max_doc_tokens``: then it is stored as several consecutive
        documents, cut at piece boundaries (counted in ``split_docs``).
        Returns the number of non-empty documents stored by this call.
        """
        values = np.asarray(values, dtype=np.uint32)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        stops = offsets[np.flatnonzero(np.asarray(ends, dtype=bool)) + 1]  # where each completed document stops
        done = 0
        if stops.size:
            doc_lengths = np.diff(stops, prepend=0)
            doc_lengths[0] += self.open_tokens
            done = int((doc_lengths > 0).sum())
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
                done += 1
                self._flush_row_group()
        return done

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
        tokens = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.uint32()))
        table = pa.Table.from_arrays([pa.array(doc_ids, type=pa.uint64()), tokens], schema=SCHEMA)
        if self._writer is None:
            name = f"part-{len(self.shards):05d}.parquet"
            self._file = self.fs.open(f"{self.path}/{name}", "wb")
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
    """Read access to a tokens artifact (local or fsspec URL)."""

    url: str
    n_vocab: int
    shards: tuple

    @classmethod
    def from_artifact(cls, artifact) -> "TokenShards":
        m = artifact.manifest
        if artifact.kind != "tokens":
            raise CtstoreError(f"{artifact}: is a {artifact.kind} artifact, expected tokens")
        return cls(artifact.url, int(m["n_vocab"]), tuple(m["shards"]))

    @property
    def n_tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards)

    def read(self, shard: int, row_groups: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(values uint32, offsets int64)`` of whole documents in the given row groups."""
        return read_shard(f"{self.url}/{self.shards[shard]['name']}", row_groups)


def read_shard(url: str, row_groups: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    import fsspec

    try:
        with fsspec.open(url, "rb") as f:
            pf = pq.ParquetFile(f)
            table = pf.read_row_groups(row_groups, columns=["tokens"]) if row_groups is not None \
                else pf.read(columns=["tokens"])
    except (OSError, pa.ArrowException) as exc:
        raise CtstoreError(f"{url}: cannot read token shard ({exc})") from None
    column = table.column("tokens").combine_chunks()
    if not pa.types.is_large_list(column.type) or column.type.value_type != pa.uint32():
        raise CtstoreError(f"{url}: column 'tokens' has type {column.type}, expected large_list<uint32>")
    offsets = column.offsets.to_numpy().astype(np.int64, copy=False)
    values = column.values.to_numpy(zero_copy_only=False)
    values = values[offsets[0]:offsets[-1]]
    return values, offsets - offsets[0]
