"""The ``counts`` artifact format: unigram, rank and CSR lag matrices in one Zarr v3 group.

Layout of ``counts.zarr`` (:data:`STORE`; attributes ``n_vocab``, ``lags``, ``tokens``,
``format_version``, ``tokenizer``): ``unigram`` (uint64, V) and ``rank``
(uint32, ids by decreasing count, ties by id), then one group ``lag_k`` per
lag in the anndata ``csr_matrix`` encoding: ``indptr`` (int64, V+1),
``indices`` and ``data`` (uint32, nnz; chunks of ``ZARR_CHUNK`` elements),
every array with :func:`compressors`.

Writing (:class:`CountStoreWriter`): the group, unigram and rank first, then
each lag either whole (:meth:`~CountStoreWriter.write_lag`) or as empty
arrays whose chunk-aligned ranges independent tasks fill
(:meth:`~CountStoreWriter.create_lag`, :func:`write_elements`).

Reading (:class:`CountStore`): row blocks are read without touching the rest
of the matrix: ``indptr[r0:r1+1]`` gives the element range, and Zarr decodes
only the chunks of ``indices`` and ``data`` that overlap it (about 1M elements
each).

Zarr reads an absent chunk as zeros; every read first checks that the chunks
it covers and the artifact's manifest lists are present (:class:`ChunkIndex`),
so a deleted chunk is a one-line error, never a silently different matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CtstoreError
from ..location import Location
from . import require, write_file

if TYPE_CHECKING:
    import scipy.sparse as sp

__all__ = ["compressors", "ZARR_CHUNK", "FORMAT_VERSION", "STORE", "CountStore", "CountStoreWriter",
           "write_elements"]

FORMAT_VERSION = 1
STORE = "counts.zarr"  # the Zarr group's name inside the artifact directory

ZARR_CHUNK = 1 << 20  # elements per chunk of indices/data (~4 MB uncompressed)
# byte-shuffled LZ4 (level 9) in Blosc. Per stored entry (4 B index + 4 B count), lag 2 of the benchmark stores
# (2026-12-07, load ~1): synthetic V = 131,072 encode 4.8 ns, decode 4.8 ns, 2.19 B; real text x40 encode
# 6.4 ns, decode 2.7 ns, 2.28 B. Byte-shuffled zstd level 1 (used before) took 12.0 / 7.9 ns and 2.00 B, and
# 19.1 / 7.1 ns and 1.95 B: a count spent more CPU compressing its store than counting some lags.
# crc32c after compression: a corrupted chunk fails its read instead of decoding to garbage


BLOSC = dict(cname="lz4", clevel=9, shuffle="shuffle")


@cache
def compressors() -> tuple:
    """The codecs after serialisation of every array ctstore writes to Zarr (zarr imports here, when a
    store is first written: a count's start-up does not wait for it)."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    return BloscCodec(**BLOSC), Crc32cCodec()


@cache
def _chunk_codecs() -> tuple:
    """numcodecs' Blosc and CRC32C with the parameters of :func:`compressors`: what Zarr's v3 codecs call."""
    from numcodecs import CRC32C, Blosc

    shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
    return Blosc(cname=BLOSC["cname"], clevel=BLOSC["clevel"], shuffle=shuffle[BLOSC["shuffle"]], blocksize=0), CRC32C()


def encode_chunk(values: np.ndarray) -> bytes:
    """The bytes of one chunk file of a little-endian 1-d array written with :func:`compressors` (Blosc, then
    a crc32c appended): the same bytes as Zarr's write path (a test compares), at half its CPU."""
    blosc, crc = _chunk_codecs()
    return bytes(crc.encode(blosc.encode(np.ascontiguousarray(values))))


VECTOR_CHUNK = 1 << 20  # elements per chunk of unigram, rank and indptr


class CountStoreWriter:
    """Create the Zarr group of a count store at ``location`` with its attributes, unigram and rank."""

    def __init__(self, location: Location, unigram: np.ndarray, lags: int, tokens: str, tokenizer: str | None):
        self.location = location
        self.n_vocab = V = int(unigram.size)
        rank = np.argsort(-unigram.astype(np.int64), kind="stable").astype(np.uint32)
        self.group = location.open_group("w")
        self.group.attrs.update({"n_vocab": V, "lags": lags, "tokens": tokens, "format_version": FORMAT_VERSION,
                                 "tokenizer": tokenizer})
        for name, values in (("unigram", unigram), ("rank", rank)):
            self.group.create_array(name, data=values, chunks=(min(V, VECTOR_CHUNK),), compressors=compressors())

    def create_lag(self, lag: int, indptr: np.ndarray) -> dict[str, Location]:
        """Write ``lag_k/indptr``; create ``indices`` and ``data`` of ``indptr[-1]`` elements, unwritten.

        Returns the locations of ``indices`` and ``data``, for tasks that fill
        chunk-aligned ranges of them (:func:`write_elements`).
        """
        V = self.n_vocab
        g = self.group.create_group(f"lag_{lag}")
        g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [V, V], "lag": lag})
        g.create_array("indptr", data=indptr.astype(np.int64, copy=False), chunks=(min(V + 1, VECTOR_CHUNK),),
                       compressors=compressors())
        nnz = int(indptr[-1])
        for name in ("indices", "data"):
            g.create_array(name, shape=(nnz,), dtype=np.uint32, chunks=(ZARR_CHUNK,), compressors=compressors())
        return {name: self.location.child(f"lag_{lag}", name) for name in ("indices", "data")}

    def write_lag(self, lag: int, indptr: np.ndarray, indices: np.ndarray, counts: np.ndarray) -> None:
        """Write one lag's whole CSR matrix (``indices`` int32 or uint32, ``counts`` < 2^32)."""
        self.create_lag(lag, indptr)
        write_elements(self.location.child(f"lag_{lag}", "indices"), 0, indices.view(np.uint32))
        write_elements(self.location.child(f"lag_{lag}", "data"), 0, counts.astype(np.uint32, copy=False))


def write_elements(array: Location, start: int, values: np.ndarray) -> None:
    """Write uint32 ``values`` at ``[start, start + len)`` of a flat array made by :meth:`CountStoreWriter.create_lag`.

    The range must cover whole chunks (except at the array's end): then the
    caller owns every chunk it writes, and tasks never race on one. Each chunk file
    is encoded here (:func:`encode_chunk`) and written whole, as Zarr would write it:
    the last chunk padded with zeros (the fill value), a chunk of zeros not written.
    Zarr's write path took twice the CPU (11M entries: 0.28 vs 0.14 CPU-s).
    """
    if start % ZARR_CHUNK:
        raise ValueError(f"{array}: a write must start on a chunk boundary, not at element {start}")
    values = np.asarray(values)
    if values.dtype != np.uint32:
        raise ValueError(f"{array}: count store arrays hold uint32, not {values.dtype}")
    for at in range(0, values.size, ZARR_CHUNK):
        piece = values[at:at + ZARR_CHUNK]
        if not piece.any():
            continue  # all fill value: Zarr leaves such a chunk unwritten, and reads zeros
        if piece.size < ZARR_CHUNK:
            piece = np.concatenate([piece, np.zeros(ZARR_CHUNK - piece.size, np.uint32)])
        write_file(array.child("c", str((start + at) // ZARR_CHUNK)), encode_chunk(piece))


@dataclass(frozen=True)
class CountStore:
    """Read a count store: ``url`` and ``storage_options`` (see :attr:`location`), ``listed_chunks`` to check."""

    url: str
    storage_options: dict | None = None
    # chunk keys the manifest lists (None: read manifest.json beside the store when first needed)
    listed_chunks: frozenset | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_artifact(cls, artifact) -> "CountStore":
        from ..integrity import ChunkIndex

        require(artifact, "counts")
        location = artifact.location.child(STORE)
        return cls.at(location, ChunkIndex.from_manifest(location, artifact.manifest).listed)

    @classmethod
    def at(cls, location: Location, listed_chunks: frozenset | None = None) -> "CountStore":
        return cls(location.url, location.storage_options or None, listed_chunks)

    @cached_property
    def location(self) -> Location:
        """Where the store is, with its storage options: it pickles as such into Dask tasks."""
        return Location(self.url, self.storage_options or {})

    @cached_property
    def chunk_index(self):
        from ..integrity import ChunkIndex

        return ChunkIndex(self.location, listed=self.listed_chunks)

    @cached_property
    def group(self):
        try:
            return self.location.open_group("r")
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise CtstoreError(f"{self.url}: not a readable count store ({exc})") from None

    @property
    def n_vocab(self) -> int:
        return int(self.group.attrs["n_vocab"])

    @property
    def lags(self) -> int:
        return int(self.group.attrs["lags"])

    def _read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Read ``name[start:stop]``; a damaged chunk becomes a one-line error naming array and chunk."""
        from ..integrity import chunk_error

        arr = self.group[name]
        lo = start or 0
        hi = arr.shape[0] if stop is None else min(stop, arr.shape[0])
        if hi > lo:
            self.chunk_index.require(name, range(lo // arr.chunks[0], (hi - 1) // arr.chunks[0] + 1))
        try:
            return arr[start:stop]
        except (ValueError, OSError, RuntimeError, KeyError) as exc:
            raise chunk_error(self.url, name, lo, hi, arr.chunks[0], exc) from None

    @cached_property
    def unigram(self) -> np.ndarray:
        return self._read("unigram")

    @cached_property
    def rank(self) -> np.ndarray:
        return self._read("rank")

    def _lag_group(self, lag: int):
        if not 1 <= lag <= self.lags:
            raise CtstoreError(f"{self.url}: lag {lag} not stored (lags 1..{self.lags})")
        return self.group[f"lag_{lag}"]

    def nnz(self, lag: int) -> int:
        return int(self._lag_group(lag)["indices"].shape[0])

    def indptr(self, lag: int) -> np.ndarray:
        self._lag_group(lag)
        return self._read(f"lag_{lag}/indptr")

    def row_block(self, lag: int, r0: int, r1: int, indptr: np.ndarray | None = None) -> sp.csr_matrix:
        """Rows ``[r0, r1)`` of ``lag_k`` as a ``(r1-r0) × V`` CSR matrix (uint32 counts)."""
        import scipy.sparse as sp

        self._lag_group(lag)
        ptr = indptr[r0: r1 + 1] if indptr is not None else self._read(f"lag_{lag}/indptr", r0, r1 + 1)
        lo, hi = int(ptr[0]), int(ptr[-1])
        indices = self._read(f"lag_{lag}/indices", lo, hi) if hi > lo else np.empty(0, np.uint32)
        data = self._read(f"lag_{lag}/data", lo, hi) if hi > lo else np.empty(0, np.uint32)
        return sp.csr_matrix((data, indices.astype(np.int32), ptr - lo), shape=(r1 - r0, self.n_vocab))

    def matrix(self, lag: int) -> sp.csr_matrix:
        """The whole ``lag_k`` matrix (only for vocabularies that fit in memory)."""
        return self.row_block(lag, 0, self.n_vocab)
