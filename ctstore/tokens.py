"""The ``tokens`` artifact format: Parquet shards of documents (DESIGN.md section 1).

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

from ._util import CtstoreError

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
                 row_group_tokens: int = ROW_GROUP_TOKENS):
        self.fs, self.path = fs, path
        self.shard_tokens, self.row_group_tokens = shard_tokens, min(row_group_tokens, shard_tokens)
        self.shards: list[dict] = []
        self._writer = None
        self._file = None
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_tokens = 0
        self._next_doc = 0

    def add(self, values: np.ndarray, lengths: np.ndarray) -> None:
        """Add a batch of documents given as concatenated ids and per-document lengths."""
        keep = lengths > 0
        if not keep.all():
            lengths = lengths[keep]
        if len(lengths) == 0:
            return
        doc_ids = np.arange(self._next_doc, self._next_doc + len(lengths), dtype=np.uint64)
        self._next_doc += len(lengths)
        self._pending.append((doc_ids, np.asarray(values, dtype=np.uint32), lengths.astype(np.int64)))
        self._pending_tokens += int(values.size)
        if self._pending_tokens >= self.row_group_tokens:
            self._flush_row_group()

    def _flush_row_group(self) -> None:
        if not self._pending:
            return
        doc_ids = np.concatenate([p[0] for p in self._pending])
        values = np.concatenate([p[1] for p in self._pending])
        lengths = np.concatenate([p[2] for p in self._pending])
        self._pending, self._pending_tokens = [], 0
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
