"""Arithmetic of a count before any work starts (no I/O): map tasks, reduce row blocks, assemble ranges.

The map/reduce engine (:mod:`.mapreduce`) groups row groups of the token shards
into map tasks of at most ``chunk_tokens`` tokens, sized from the budget of one
task at ``MAP_BYTES_PER_TOKEN``; reduce tasks cover runs of mini-blocks of
``MINI_ROWS`` rows whose spilled entries fit ``reduce_entries``
(:func:`plan_row_blocks`); assemble tasks each own a range of whole Zarr chunks.
The one-pass engine (:mod:`.onepass`) is sized at ``FUSED_BYTES_PER_TOKEN``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CtstoreError
from ..formats.counts import ZARR_CHUNK
from ..units import format_bytes
from .fused import BLOCK_OCCURRENCES, TailWork
from .kernel import HeadWork

MINI_ROWS = 256
MAP_BYTES_PER_TOKEN = 64  # shard read, separated stream, head codes, tail pairs, both counting passes, spill keys
MAP_MAX_HEAD = 2048  # dense head of a map task: a 16 MB table, so chunks stay large
MAP_TAIL_BYTES_PER_TOKEN = 24  # of MAP_BYTES_PER_TOKEN: a group of lags' tail entries (the per-lag kernel's pairs)
REDUCE_BYTES_PER_ENTRY = 48  # keys + counts, the packed concatenation, timsort's buffer, unique keys/counts
FUSED_BYTES_PER_TOKEN = 18  # one pass, peak while building tokens, separated stream, head codes, tail positions
ASSEMBLE_BYTES_PER_ENTRY = 16
MAX_CHUNK_TOKENS = 16 << 20


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


def spill_format_holds(n_vocab: int) -> bool:
    """Whether map/reduce can count V ids: a spilled entry packs its key ``(row % MINI_ROWS)·V + column`` under
    at least one bit of count in a uint32."""
    return n_vocab * MINI_ROWS <= 2**31


def plan_count(n_vocab: int, shards: list[dict], lags: int, task_memory: int) -> CountPlan:
    """Group row groups into map tasks and size reduce/assemble tasks for ``task_memory`` bytes."""
    if not spill_format_holds(n_vocab):
        raise CtstoreError(f"n_vocab={n_vocab} too large for the count spill format (V·{MINI_ROWS} <= 2^31)")
    # the kernel's scratch that does not grow with the chunk (its tail columns are in MAP_BYTES_PER_TOKEN)
    fixed = HeadWork.nbytes(MAP_MAX_HEAD, n_vocab, 0) + TailWork.nbytes(lags, n_vocab, MAP_MAX_HEAD, BLOCK_OCCURRENCES)
    chunk_tokens = int(min(MAX_CHUNK_TOKENS, (task_memory - fixed) // MAP_BYTES_PER_TOKEN))
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
        spill_bytes_max=n_tokens * lags * 4,  # a packed entry per pair at most (a count of c takes <= c entries)
    )


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

