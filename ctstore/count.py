"""Stage ``count``: tokens → sparse lag-k co-occurrence store in Zarr (DESIGN.md sections 1-2).

``lag_k[a, b] = #{i : t_i = a, t_{i+k} = b, same document}`` for k = 1..L.

Map → shuffle → reduce → assemble, every phase as independent Dask tasks:

1. **map** (one task per group of row groups, ``chunk_tokens`` tokens): per lag,
   encode valid pairs as ``key = a·V + b`` (uint64), sort in place, reduce to
   unique keys + counts, spill keys (as uint32 offsets within their
   *mini-block* of ``MINI_ROWS`` rows), counts, and an index of where each
   mini-block starts. A finished map task renames
   its directory into place, so a rerun after an interruption skips it.
2. **reduce** (one task per lag and row block): row blocks are formed *after*
   the maps from the real entry counts of mini-blocks, so no block exceeds the
   per-task memory. Each task memory-maps its slices of every spill, merges
   them (one in-place sort of the concatenation, counts packed under keys) and spills
   CSR pieces.
3. **assemble** (one task per range of Zarr chunks): copy CSR pieces into the
   flat ``indices``/``data`` arrays; every task writes only the chunks it owns.

The Zarr group is written inside the artifact directory; the manifest is
written last, so a killed count never looks complete, and the spill directory
(``<workspace>/tmp/counts-<fp>``) lets the rerun resume.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass

import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec

from ._util import CtstoreError, format_bytes, log, stopwatch
from .cluster import Runner
from .tokens import TokenShards
from .workspace import Workspace, build_artifact, fingerprint

__all__ = ["CountParams", "CountPlan", "plan_count", "count_cooccurrences"]

FORMAT_VERSION = 1
MINI_ROWS = 256
SPILL_VERSION = 2  # in spill directory names: a resumed run never reads another format
ZARR_CHUNK = 1 << 20  # elements per chunk of indices/data (~4 MB uncompressed)
MAP_BYTES_PER_TOKEN = 64  # measured ~56: shard read, remaining, pairs, keys, sort, flags, uniques
REDUCE_BYTES_PER_ENTRY = 48  # keys + counts, their concatenation, argsort, gathered copies
ASSEMBLE_BYTES_PER_ENTRY = 16
MAX_CHUNK_TOKENS = 16 << 20
# byte-shuffled zstd level 1 in Blosc: on count data it measured ~2x faster to write and
# 3x faster to read than zarr's default zstd, with a better ratio (2.2x indices, 18x data)
# crc32c after compression: a corrupted chunk fails its read instead of decoding to garbage
COMPRESSORS = [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"), Crc32cCodec()]


@dataclass(frozen=True)
class CountParams:
    lags: int = 10
    # count only the training documents of the split sft uses at this validation fraction
    # (ctstore.split); None counts every document
    val_fraction: float | None = None

    def __post_init__(self):
        if not 1 <= self.lags <= 64:
            raise CtstoreError(f"--lags must be between 1 and 64, not {self.lags}")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise CtstoreError(f"--train-only must be between 0 and 1, not {self.val_fraction}")


@dataclass(frozen=True)
class CountPlan:
    """Arithmetic of a count, derived before any work starts (no I/O)."""

    n_vocab: int
    lags: int
    n_tokens: int
    map_units: tuple  # ((shard, (row groups...), tokens), ...)
    chunk_tokens: int
    reduce_entries: int
    assemble_entries: int
    spill_bytes_max: int

    def describe(self) -> str:
        return (f"count plan: V={self.n_vocab}, lags 1..{self.lags}, {self.n_tokens} tokens, "
                f"{len(self.map_units)} map task(s) of <= {self.chunk_tokens} tokens, reduce blocks of "
                f"<= {self.reduce_entries} entries, projected spill <= {format_bytes(self.spill_bytes_max)}")


def plan_count(n_vocab: int, shards: list[dict], lags: int, task_memory: int) -> CountPlan:
    """Group row groups into map tasks and size reduce/assemble tasks for ``task_memory`` bytes."""
    if n_vocab * MINI_ROWS >= 2**32 or n_vocab * n_vocab >= 2**63:
        raise CtstoreError(f"n_vocab={n_vocab} too large for the count spill format (V·{MINI_ROWS} < 2^32)")
    chunk_tokens = int(min(MAX_CHUNK_TOKENS, task_memory // MAP_BYTES_PER_TOKEN))
    if chunk_tokens < 1 << 16:
        raise CtstoreError(f"count map step: needs {format_bytes((1 << 16) * MAP_BYTES_PER_TOKEN)} per task, "
                           f"the memory budget allows {format_bytes(task_memory)}")
    units = []
    for s, shard in enumerate(shards):
        group, size = [], 0
        for rg, n in enumerate(shard["row_groups"]):
            if group and size + n > chunk_tokens:
                units.append((s, tuple(group), size))
                group, size = [], 0
            group.append(rg)
            size += n
        if group:
            units.append((s, tuple(group), size))
    for s, rgs, n in units:
        if n > chunk_tokens and n * MAP_BYTES_PER_TOKEN > task_memory:
            raise CtstoreError(f"count map step: a row group of shard {shards[s]['name']} has {n} tokens, "
                               f"needing {format_bytes(n * MAP_BYTES_PER_TOKEN)}; the budget allows "
                               f"{format_bytes(task_memory)} per task")
    n_tokens = sum(u[2] for u in units)
    return CountPlan(
        n_vocab=n_vocab, lags=lags, n_tokens=n_tokens, map_units=tuple(units), chunk_tokens=chunk_tokens,
        reduce_entries=max(1 << 16, task_memory // REDUCE_BYTES_PER_ENTRY),
        assemble_entries=max(ZARR_CHUNK, (task_memory // ASSEMBLE_BYTES_PER_ENTRY) // ZARR_CHUNK * ZARR_CHUNK),
        spill_bytes_max=n_tokens * lags * 12,
    )


# ---------------------------------------------------------------------------------------
# map


def remaining_in_document(offsets: np.ndarray) -> np.ndarray:
    """``remaining[i]`` = tokens from position i to the end of its document (int32)."""
    n = int(offsets[-1])
    if n >= 2**31:
        raise CtstoreError(f"a count chunk of {n} tokens exceeds 2^31")
    remaining = np.repeat(offsets[1:].astype(np.int32), np.diff(offsets))
    remaining -= np.arange(n, dtype=np.int32)
    return remaining


def unique_pairs(values: np.ndarray, remaining: np.ndarray, lag: int, n_vocab: int,
                 keys_buffer: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``a·V+b`` keys and their counts for one lag of one chunk of documents.

    ``values`` are the concatenated token ids, ``remaining`` the output of
    :func:`remaining_in_document`. Pairs never cross a document boundary.
    """
    n = values.size
    if n <= lag:
        return np.empty(0, np.uint64), np.empty(0, np.uint32)
    valid = remaining[: n - lag] > lag
    a = values[: n - lag][valid]
    m = a.size
    keys = keys_buffer[:m] if keys_buffer is not None and keys_buffer.size >= m else np.empty(m, np.uint64)
    np.multiply(a, np.uint64(n_vocab), out=keys, dtype=np.uint64)
    keys += values[lag:][valid]
    keys.sort()
    if m == 0:
        return np.empty(0, np.uint64), np.empty(0, np.uint32)
    first = np.empty(m, dtype=bool)
    first[0] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    counts = np.empty(starts.size, np.uint32)  # run lengths, without np.diff's int64 temporaries
    np.subtract(starts[1:], starts[:-1], out=counts[:-1], casting="unsafe")
    counts[-1] = m - starts[-1]
    return keys[starts], counts


def _atomic_dir(final: str) -> str:
    tmp = f"{final}.partial-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    return tmp


def _publish_dir(tmp: str, final: str) -> None:
    try:
        os.rename(tmp, final)
    except OSError:  # another attempt finished first: keep its result
        shutil.rmtree(tmp, ignore_errors=True)


def map_task(tokens_url: str, shard_name: str, row_groups: tuple, n_vocab: int, lags: int,
             out_dir: str, val_fraction: float | None = None) -> dict:
    """Count one chunk of a token shard; spill per-lag sorted partial counts to ``out_dir``."""
    from .tokens import read_shard

    if os.path.isdir(out_dir):
        return {"dir": out_dir, "resumed": True}
    values, offsets = read_shard(f"{tokens_url}/{shard_name}", list(row_groups))
    if val_fraction is not None:
        values, offsets = _training_only(f"{tokens_url}/{shard_name}", list(row_groups), values, offsets,
                                         val_fraction)
    if values.size and int(values.max()) >= n_vocab:
        raise CtstoreError(f"{tokens_url}/{shard_name}: token id {int(values.max())} >= declared "
                           f"vocabulary {n_vocab}")
    n_mini = -(-n_vocab // MINI_ROWS)
    bounds = np.arange(n_mini + 1, dtype=np.uint64) * np.uint64(MINI_ROWS * n_vocab)
    tmp = _atomic_dir(out_dir)
    try:
        np.save(f"{tmp}/unigram.npy", np.bincount(values, minlength=n_vocab).astype(np.uint64))
        buffer = np.empty(values.size, np.uint64)
        remaining = remaining_in_document(offsets)
        for lag in range(1, lags + 1):
            keys, counts = unique_pairs(values, remaining, lag, n_vocab, buffer)
            index = np.searchsorted(keys, bounds).astype(np.int64)
            # spill keys relative to their mini-block (< MINI_ROWS·V ≤ 2^26): 4 bytes instead of 8,
            # a third less spill I/O, which is what map and reduce mostly wait for at scale
            keys -= np.repeat(bounds[:-1], np.diff(index))
            np.save(f"{tmp}/lag{lag:02d}.local.npy", keys.astype(np.uint32))
            np.save(f"{tmp}/lag{lag:02d}.counts.npy", counts)
            np.save(f"{tmp}/lag{lag:02d}.index.npy", index)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(out_dir, "spill", exc) from None
    _publish_dir(tmp, out_dir)
    return {"dir": out_dir, "resumed": False}


def _write_error(path: str, what: str, exc: OSError) -> CtstoreError:
    """One-line error for a failed write, saying how much room is left (a full disk is the usual cause)."""
    try:
        free = shutil.disk_usage(os.path.dirname(path.rstrip("/")) or ".").free
        room = f"; {format_bytes(free)} free on that disk"
    except OSError:
        room = ""
    return CtstoreError(f"{path}: cannot write {what} ({exc.strerror or exc}{room})")


# ---------------------------------------------------------------------------------------
# reduce


COUNT_BITS = 28  # counts packed under keys: keys < V² ≤ 2^36, so key << 28 | count fits 64 bits


def merge_sorted_counts(parts: list[tuple[np.ndarray, np.ndarray]], n_vocab: int | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Merge sorted (keys, counts) runs into sorted unique keys with summed uint64 counts.

    When keys fit 36 bits and counts 28 bits, each entry is packed into one uint64
    (``key << 28 | count``) and the concatenation is sorted in place: numpy's SIMD
    sort of plain uint64 measured ~5x faster here than an argsort plus two gathers.
    """
    parts = [p for p in parts if p[0].size]
    if not parts:
        return np.empty(0, np.uint64), np.empty(0, np.uint64)
    if len(parts) == 1:
        return np.asarray(parts[0][0]), np.asarray(parts[0][1]).astype(np.uint64)
    packable = (n_vocab is not None and n_vocab * n_vocab <= 1 << (64 - COUNT_BITS)
                and max(int(np.max(c)) for _, c in parts) < 1 << COUNT_BITS)
    if packable:
        packed = np.concatenate([(np.asarray(k, np.uint64) << np.uint64(COUNT_BITS)) | np.asarray(c, np.uint64)
                                 for k, c in parts])
        packed.sort()
        keys = packed >> np.uint64(COUNT_BITS)
        counts = packed & np.uint64((1 << COUNT_BITS) - 1)
        del packed
    else:
        keys = np.concatenate([p[0] for p in parts])
        counts = np.concatenate([np.asarray(p[1], dtype=np.uint64) for p in parts])
        order = np.argsort(keys)  # order among equal keys does not matter: counts are summed
        keys = keys[order]
        counts = counts[order]
        del order
    first = np.empty(keys.size, dtype=bool)
    first[0] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    return keys[starts], np.add.reduceat(counts, starts)


def reduce_task(map_dirs: list[str], lag: int, mini_lo: int, mini_hi: int, n_vocab: int,
                max_entries: int, out_prefix: str) -> int:
    """Merge the spills of rows ``[mini_lo, mini_hi) * MINI_ROWS`` for one lag into CSR pieces."""
    done = f"{out_prefix}.rownnz.npy"
    if os.path.exists(done):
        return int(np.load(done).sum())
    r0 = mini_lo * MINI_ROWS
    r1 = min(mini_hi * MINI_ROWS, n_vocab)
    running: tuple | None = None
    batch, batch_entries = [], 0
    bases = np.arange(mini_lo, mini_hi, dtype=np.uint64) * np.uint64(MINI_ROWS * n_vocab)
    for d in map_dirs:
        index = np.load(f"{d}/lag{lag:02d}.index.npy")
        lo, hi = int(index[mini_lo]), int(index[mini_hi])
        if hi == lo:
            continue
        local = np.load(f"{d}/lag{lag:02d}.local.npy", mmap_mode="r")[lo:hi]
        keys = local.astype(np.uint64) + np.repeat(bases, np.diff(index[mini_lo:mini_hi + 1]))
        counts = np.load(f"{d}/lag{lag:02d}.counts.npy", mmap_mode="r")[lo:hi]
        if batch and batch_entries + (hi - lo) > max_entries:
            running = merge_sorted_counts(batch + ([running] if running else []), n_vocab)
            batch, batch_entries = [], 0
        batch.append((keys, np.array(counts)))
        batch_entries += hi - lo
    keys, counts = merge_sorted_counts(batch + ([running] if running else []), n_vocab)
    if counts.size and int(counts.max()) > np.iinfo(np.uint32).max:
        raise CtstoreError(f"lag {lag}: a pair count exceeds 2^32-1; uint32 count store cannot hold it")
    rows = (keys // np.uint64(n_vocab)).astype(np.int64) - r0
    rownnz = np.bincount(rows, minlength=r1 - r0).astype(np.int64)
    try:
        np.save(f"{out_prefix}.indices.npy", (keys % np.uint64(n_vocab)).astype(np.uint32))
        np.save(f"{out_prefix}.data.npy", counts.astype(np.uint32))
        tmp = f"{out_prefix}.rownnz.partial-{uuid.uuid4().hex[:8]}.npy"
        np.save(tmp, rownnz)
        os.replace(tmp, done)  # written last: marks the piece complete
    except OSError as exc:
        raise _write_error(out_prefix, "reduce output", exc) from None
    return int(rownnz.sum())


def plan_row_blocks(mini_entries: np.ndarray, max_entries: int) -> list[tuple[int, int]]:
    """Group consecutive mini-blocks so each group's (upper-bound) entries stay <= max_entries.

    A single mini-block above the cap becomes its own group; its reduce task then
    merges incrementally (memory bounded by the *merged* size, not the sum).
    """
    blocks, start, acc = [], 0, 0
    for i, n in enumerate(mini_entries.tolist()):
        if i > start and acc + n > max_entries:
            blocks.append((start, i))
            start, acc = i, 0
        acc += n
    blocks.append((start, len(mini_entries)))
    return blocks


# ---------------------------------------------------------------------------------------
# assemble


def assemble_task(array_url: str, pieces: list[tuple[str, int, int]], start: int, stop: int, suffix: str) -> int:
    """Write elements ``[start, stop)`` of a flat CSR array from reduce pieces.

    ``pieces`` lists ``(prefix, global_offset, nnz)`` in row order; only the pieces
    overlapping the range are read. ``start``/``stop`` are chunk-aligned (except
    the array end), so this task owns every chunk it writes.
    """
    import zarr

    arr = zarr.open_array(array_url, mode="r+")
    out = np.empty(stop - start, dtype=arr.dtype)
    for prefix, offset, nnz in pieces:
        lo, hi = max(start, offset), min(stop, offset + nnz)
        if lo >= hi:
            continue
        src = np.load(f"{prefix}.{suffix}.npy", mmap_mode="r")
        out[lo - start: hi - start] = src[lo - offset: hi - offset]
    arr[start:stop] = out
    return stop - start


# ---------------------------------------------------------------------------------------
# driver


def count_cooccurrences(tokens, workspace: Workspace | None = None, *, params: CountParams | None = None,
                        memory: str | int = "4GB", scheduler: str | None = None, force: bool = False):
    """Count lag-1..L co-occurrences of a tokens artifact into a ``counts`` artifact.

    Parameters
    ----------
    tokens : a tokens :class:`~ctstore.workspace.Artifact`.
    params : ``CountParams(lags=10)``; the fingerprint depends only on it and the tokens.
    memory : budget for the whole process tree, e.g. ``"2GB"``.
    scheduler : ``None``/``"local"`` (LocalCluster), ``"sync"``, or a scheduler address.
    """
    ws = workspace or tokens.workspace
    params = params or CountParams()
    shards = TokenShards.from_artifact(tokens)
    fp = fingerprint("counts", FORMAT_VERSION, _param_dict(params), {"tokens": tokens.fingerprint})

    def build(path: str) -> dict:
        return _count_into(ws, path, fp, tokens, shards, params, memory, scheduler)

    artifact, _ = build_artifact(ws, "counts", fp, build, force=force, keep_partial=True)
    return artifact


def _count_into(ws, path, fp, tokens, shards: TokenShards, params, memory, scheduler) -> dict:
    import zarr

    timings: dict = {}
    V, L = shards.n_vocab, params.lags
    runner = Runner(memory, scheduler)
    plan = plan_count(V, list(shards.shards), L, runner.plan.task_memory)
    scratch = ws.scratch_dir("counts", fp)
    free = shutil.disk_usage(scratch).free
    log(plan.describe())
    log(f"{runner.plan.describe()}; scratch {scratch} ({format_bytes(free)} free)")
    if plan.spill_bytes_max > free:
        log(f"warning: projected spill upper bound {format_bytes(plan.spill_bytes_max)} exceeds free disk "
            f"{format_bytes(free)}; continuing because spills are usually far smaller (unique pairs only)")
    start = time.perf_counter()
    with runner:
        # a map directory is named by exactly the data it covers, so a rerun with a
        # different plan never mistakes another chunking's output for its own
        map_dirs = [f"{scratch}/map-v{SPILL_VERSION}-s{s:05d}-rg{rgs[0]:05d}-{rgs[-1]:05d}"
                    for s, rgs, _ in plan.map_units]
        with stopwatch(timings, "map_s"):
            results = runner.map(map_task, [
                (shards.url, shards.shards[s]["name"], rgs, V, L, d, params.val_fraction)
                for (s, rgs, _), d in zip(plan.map_units, map_dirs)], desc="count map")
        resumed = sum(r["resumed"] for r in results)
        if resumed:
            log(f"count: resumed {resumed} finished map task(s) from an earlier run")

        unigram = np.zeros(V, dtype=np.uint64)
        for d in map_dirs:
            unigram += np.load(f"{d}/unigram.npy")
        rank = np.argsort(-unigram.astype(np.int64), kind="stable").astype(np.uint32)

        reduce_jobs, blocks_by_lag = [], {}
        os.makedirs(f"{scratch}/reduce", exist_ok=True)
        for lag in range(1, L + 1):
            mini_entries = sum(np.diff(np.load(f"{d}/lag{lag:02d}.index.npy")) for d in map_dirs)
            blocks = plan_row_blocks(mini_entries, plan.reduce_entries)
            blocks_by_lag[lag] = blocks
            for lo, hi in blocks:
                reduce_jobs.append((map_dirs, lag, lo, hi, V, plan.reduce_entries,
                                    f"{scratch}/reduce/lag{lag:02d}-m{lo:06d}"))
        log(f"count: {len(reduce_jobs)} reduce task(s) over {L} lag(s)")
        with stopwatch(timings, "reduce_s"):
            nnz_pieces = runner.map(reduce_task, reduce_jobs, desc="count reduce")

        group = zarr.open_group(_zarr_url(ws, path), mode="w", storage_options=_so(ws))
        group.attrs.update({"n_vocab": V, "lags": L, "tokens": tokens.fingerprint,
                            "format_version": FORMAT_VERSION, "tokenizer": tokens.manifest.get("tokenizer")})
        group.create_array("unigram", data=unigram, chunks=(min(V, 1 << 20),), compressors=COMPRESSORS)
        group.create_array("rank", data=rank, chunks=(min(V, 1 << 20),), compressors=COMPRESSORS)
        nnz_by_lag, assemble_jobs, it = {}, [], iter(nnz_pieces)
        for lag in range(1, L + 1):
            pieces, offset, rownnz = [], 0, []
            for lo, _hi in blocks_by_lag[lag]:
                nnz = next(it)
                prefix = f"{scratch}/reduce/lag{lag:02d}-m{lo:06d}"
                pieces.append((prefix, offset, nnz))
                rownnz.append(np.load(f"{prefix}.rownnz.npy"))
                offset += nnz
            nnz_by_lag[lag] = offset
            indptr = np.zeros(V + 1, dtype=np.int64)
            np.cumsum(np.concatenate(rownnz), out=indptr[1:])
            g = group.create_group(f"lag_{lag}")
            g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                            "shape": [V, V], "lag": lag})
            g.create_array("indptr", data=indptr, chunks=(min(V + 1, 1 << 20),), compressors=COMPRESSORS)
            for name, dtype in (("indices", np.uint32), ("data", np.uint32)):
                g.create_array(name, shape=(offset,), dtype=dtype, chunks=(ZARR_CHUNK,), compressors=COMPRESSORS)
                url = f"{_zarr_url(ws, path)}/lag_{lag}/{name}"
                for s in range(0, offset, plan.assemble_entries):
                    assemble_jobs.append((url, pieces, s, min(offset, s + plan.assemble_entries), name))
        with stopwatch(timings, "assemble_s"):
            runner.map(assemble_task, assemble_jobs, desc="count assemble")
    timings["total_s"] = round(time.perf_counter() - start, 3)
    shutil.rmtree(scratch, ignore_errors=True)
    rate = plan.n_tokens / max(timings["total_s"], 1e-9)
    log(f"count: {plan.n_tokens} tokens in {timings['total_s']:.1f} s ({rate / 1e6:.2f}M tokens/s); "
        f"nnz per lag {min(nnz_by_lag.values())}..{max(nnz_by_lag.values())}")
    return {
        "format_version": FORMAT_VERSION,
        "params": _param_dict(params),
        "inputs": {"tokens": tokens.fingerprint},
        "tokenizer": tokens.manifest.get("tokenizer"),
        "n_vocab": V,
        "tokens": int(unigram.sum()),  # counted tokens (training documents only with val_fraction)
        "nnz": {str(k): v for k, v in nnz_by_lag.items()},
        "map_tasks": len(plan.map_units),
        "reduce_tasks": len(reduce_jobs),
        "timings": timings,
        "tokens_per_s": round(rate),
        "memory_budget": runner.plan.memory,
    }


def _zarr_url(ws: Workspace, path: str) -> str:
    return f"{path}/counts.zarr" if ws.is_local else ws.fs.unstrip_protocol(f"{path}/counts.zarr")


def _so(ws: Workspace) -> dict | None:
    return None if ws.is_local else (ws.storage_options or None)


def _training_only(url: str, row_groups: list, values: np.ndarray, offsets: np.ndarray,
                   val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Drop the validation documents (``ctstore.split``) from a chunk read by ``read_shard``."""
    import fsspec
    import pyarrow.parquet as pq

    from .split import train_documents

    with fsspec.open(url, "rb") as f:
        doc_ids = pq.ParquetFile(f).read_row_groups(row_groups, columns=["doc_id"]).column("doc_id").to_numpy()
    return train_documents(values, offsets, doc_ids, val_fraction)


def _param_dict(params: CountParams) -> dict:
    """Parameters for the fingerprint and manifest; ``val_fraction`` only when set (old counts keep their names)."""
    return {k: v for k, v in asdict(params).items() if not (k == "val_fraction" and v is None)}
