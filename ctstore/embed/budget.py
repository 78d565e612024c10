"""One memory model for every k0 method, checked at plan time against ``--memory`` (the cubed habit).

A method's :func:`plan` states two figures, both in bytes:

* ``task_bytes``: what one task holds besides one operator block (accumulators,
  dense panels, FFT bands);
* ``client_bytes``: what the client process holds while the cluster runs,
  beyond its fixed reserve (:data:`~ctstore.cluster.CLIENT_RESERVE`): folded
  sums, gathered operators, dense panels.

:func:`fit` splits ``--memory`` with :func:`~ctstore.cluster.plan_cluster`
(the client share first, then workers), and sizes the operator blocks from
what a task has left: ``block_entries = (task_memory − task_bytes) /
BYTES_PER_ENTRY`` non-zeros, capped at :data:`MAX_BLOCK_ENTRIES` (more tasks
than workers keep the cluster busy) and refused below :data:`MIN_BLOCK_ENTRIES`
or below the largest operator row (a block holds at least one row). A plan
that cannot fit fails before anything is written, naming the method and both
byte counts.

``BYTES_PER_ENTRY`` is the peak of any pass that holds one block, per
non-zero: building a block (uint32 reads, their float32 copies, the lag sum,
COO row/col/data and the filtered copy: ~48 bytes) and reading one back
(CSR 8 bytes, int64 rank coordinates and float64 values for the diagonal or
PPMI sums: ~52 bytes) round up to 64. After the cluster closes, the client
also holds the output: ``E`` (V × d float32), its random fill and the rank
rows, checked against the budget less the reserve.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..cluster import CLIENT_RESERVE, ClusterPlan, plan_cluster
from ..errors import CtstoreError
from ..units import format_bytes, parse_memory

__all__ = ["BYTES_PER_ENTRY", "MAX_BLOCK_ENTRIES", "MIN_BLOCK_ENTRIES", "MemoryPlan", "fit", "output_bytes"]

BYTES_PER_ENTRY = 64
MAX_BLOCK_ENTRIES = 4 << 20  # non-zeros per row block (all lags together) when the budget allows
MIN_BLOCK_ENTRIES = 1 << 16  # below this a budget would become thousands of tiny spill files


@dataclass(frozen=True)
class MemoryPlan:
    """Projected memory of one k0 method under a cluster plan (bytes)."""

    method: str
    task_bytes: int  # per task, besides one operator block
    client_bytes: int  # in the client while the cluster runs, beyond the reserve
    block_entries: int  # non-zeros per operator block
    cluster: ClusterPlan

    @property
    def block_bytes(self) -> int:
        return self.block_entries * BYTES_PER_ENTRY

    def describe(self) -> str:
        return (f"k0 memory plan ({self.method}): {format_bytes(self.task_bytes + self.block_bytes)} per task "
                f"(operator blocks of {self.block_entries:,} non-zeros), {format_bytes(self.client_bytes)} "
                f"in the client; {self.cluster.describe()}")


def output_bytes(n_vocab: int, v_eff: int, dim: int) -> int:
    """Client memory of the output step: E, its random fill (V × d float32 each) and the rank rows."""
    return 2 * n_vocab * dim * 4 + v_eff * dim * 4


def fit(method: str, task_bytes: int, client_bytes: int, memory: str | int, scheduler: str | None, *,
        max_row_entries: int = 1, block_factor: int = 1, output: int = 0, shared: int = 0,
        hint: str = "") -> MemoryPlan:
    """Check a method's figures against ``--memory`` and size its operator blocks.

    ``shared`` is added to ``task_bytes``: arrays every task receives (the
    vocabulary-sized rank map and active mask). ``block_factor`` multiplies a block's entries where a pass holds more than
    its own rows (2 for a symmetric operator: its rows plus the transposed
    column entries). ``hint`` ends the refusal (what to lower).
    """
    total = parse_memory(memory)
    task_bytes += shared
    in_process = (scheduler or "local") == "sync"
    smallest = max(MIN_BLOCK_ENTRIES, max_row_entries) * BYTES_PER_ENTRY * block_factor
    need = (f"k0 {method}: needs {format_bytes(task_bytes + smallest)} per task and {format_bytes(client_bytes)} "
            f"in the client")
    hint = f" ({hint})" if hint else ""
    try:
        cluster = plan_cluster(total, in_process=in_process, client_extra=client_bytes)
    except CtstoreError:
        raise CtstoreError(f"{need}; --memory {format_bytes(total)} is too small for that{hint}") from None
    room = cluster.task_memory - task_bytes
    if room < smallest:
        raise CtstoreError(f"{need}; --memory {format_bytes(total)} leaves {format_bytes(cluster.task_memory)} "
                           f"per task, {format_bytes(task_bytes + smallest - cluster.task_memory)} short{hint}")
    if output > total - CLIENT_RESERVE:
        raise CtstoreError(f"k0 {method}: the embeddings need {format_bytes(output)} in the client; --memory "
                           f"{format_bytes(total)} leaves {format_bytes(total - CLIENT_RESERVE)}{hint}")
    entries = min(MAX_BLOCK_ENTRIES, room // (BYTES_PER_ENTRY * block_factor))
    return MemoryPlan(method, task_bytes, client_bytes, int(entries), cluster)
