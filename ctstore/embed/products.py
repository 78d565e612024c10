"""``A·panel`` and ``Aᵀ·panel`` of a matrix held as row blocks, run as tasks on a :class:`~ctstore.cluster.Runner`.

This is the scheduler side of the randomized SVD (:func:`ctstore.embed.rsvd.randomized_svd`
takes the two functions built here). ``load(r0, r1) -> (row indices, rows)``
reads one block inside a task; a block's rows need not be contiguous, which
lets token-id blocks feed a rank-ordered matrix. Tasks group several blocks
(:func:`~ctstore.cluster.round_robin`, a fixed number of groups), so each
product moves one dense panel per group, and the ``Aᵀ·panel`` partial sums are
folded in group order: the same bits on every scheduler.

Memory per task: the shared panel, its output (rows of ``A·panel`` or a
partial ``Aᵀ·panel``) and one block (see :mod:`ctstore.embed.budget`).
"""

from __future__ import annotations

import numpy as np

from ..cluster import round_robin

__all__ = ["block_products"]


def _task_matmul(load, block_group, panel):
    """Rows of ``A @ panel`` for the blocks in ``block_group``: list of (row indices, rows)."""
    out = []
    for r0, r1 in block_group:
        idx, block = load(r0, r1)
        out.append((idx, np.asarray(block @ panel, dtype=np.float32)))
    return out


def _task_rmatmul(load, block_group, panel):
    """``Σ_b A_bᵀ panel[rows of b]`` for the blocks in ``block_group``."""
    acc = None
    for r0, r1 in block_group:
        idx, block = load(r0, r1)
        part = np.asarray(block.T @ panel[idx], dtype=np.float32)
        acc = part if acc is None else _iadd(acc, part)
    return acc


def _iadd(acc, x):
    acc += x
    return acc


def block_products(runner, load, blocks, n_rows: int, n_tasks: int | None = None):
    """``(matmul, rmatmul)`` of the ``n_rows``-row matrix given by ``load`` over ``blocks``.

    ``load`` must be picklable (a module-level function or a ``partial`` of one).
    ``n_tasks`` fixes the number of task groups (default
    :data:`~ctstore.cluster.TASK_GROUPS`); it must not depend on the cluster.
    """
    groups = round_robin(blocks, n_tasks) if n_tasks else round_robin(blocks)

    def matmul(panel):
        shared = runner.share(panel)
        y = np.zeros((n_rows, panel.shape[1]), np.float32)

        def put(acc, parts):
            for idx, rows in parts:
                y[idx] = rows
            return acc

        runner.map_reduce(_task_matmul, [(load, g, shared) for g in groups], put, desc="rsvd A·Ω")
        return y

    def rmatmul(panel):
        shared = runner.share(panel)
        return runner.map_reduce(_task_rmatmul, [(load, g, shared) for g in groups],
                                 lambda acc, x: x if acc is None else _iadd(acc, x), desc="rsvd Aᵀ·Q")

    return matmul, rmatmul
