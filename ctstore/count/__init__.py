"""Stage ``count``: tokens → sparse lag-k co-occurrence store in Zarr (docs/design.md §3).

``lag_k[a, b] = #{i : t_i = a, t_{i+k} = b, same document}`` for k = 1..L.

* :mod:`.kernel`: the pair kernel (:class:`ChunkPairs`): one chunk of documents →
  one CSR per lag, a dense table for the most frequent ids and a counting pass by
  row for the rest, compiled (:mod:`.loops`, numba).
* :mod:`.fused`: all lags of a chunk at once (one pass over the tail tokens grouped by
  id for a group of lags, compiled in :mod:`.fused_loops`); the engines take it where
  one group holds every lag's tail entries, else :class:`ChunkPairs` lag by lag.
* :mod:`.plan`: the arithmetic of a count before any work (:func:`plan_count`).
* Two engines, one store: :mod:`.onepass` (the whole corpus in this process when it
  fits ``--memory``: no spill, no cluster start-up) and :mod:`.mapreduce` (map →
  shuffle → reduce → assemble as Dask tasks, spilled and resumable).
* :mod:`.stage`: :class:`CountParams`, :func:`count_cooccurrences` and ``STAGE``.

The store's layout is :mod:`ctstore.formats.counts` (both engines write through
its :class:`~ctstore.formats.counts.CountStoreWriter`); tasks receive the
:class:`~ctstore.location.Location` of what they read or write, so they reach an
object store with the workspace's options.
"""

from .kernel import ChunkPairs, choose_head
from .mapreduce import COUNT_BITS, assemble_task, map_task, merge_sorted_counts, reduce_task
from .plan import MINI_ROWS, CountPlan, plan_count, plan_row_blocks
from .stage import STAGE, CountParams, count_cooccurrences

__all__ = ["CountParams", "CountPlan", "plan_count", "count_cooccurrences", "STAGE", "ChunkPairs", "choose_head",
           "COUNT_BITS", "MINI_ROWS", "assemble_task", "map_task", "merge_sorted_counts",
           "reduce_task", "plan_row_blocks"]
