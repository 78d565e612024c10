"""Two-level K0 (Paper 113 §4.2): ``--hierarchical``, circulant kernel, exact method; memory O(V).

G = ⌈√V_eff⌉ groups of consecutive frequency ranks (character features are not
used: tokens of synthetic streams have none). One pass over the raw operator
blocks gives a G×G group operator (sums of raw counts between groups) and,
within each group, the log1p diagonal sums of its own operator; K0 at both
levels (:func:`~ctstore.embed.circulant.circulant_embedding`), and
``E[v] = [E_group(group(v)), E_within(v)]`` with d/2 dimensions each.
"""

from __future__ import annotations

import numpy as np

from ..formats.csr import load_csr
from .blocks import OperatorSpec
from .budget import MemoryPlan, fit
from .circulant import circulant_embedding, diagonal_sums

__all__ = ["groups_of", "plan", "embed"]


def groups_of(n: int) -> tuple[int, int]:
    """``(n_groups, group_size)`` for n ranks: about √n groups of equal size (the last may be short)."""
    n_groups = int(np.ceil(np.sqrt(n)))
    group_size = int(np.ceil(n / n_groups))
    return int(np.ceil(n / group_size)), group_size


def plan(n: int, d: int, memory, scheduler, **fit_args) -> MemoryPlan:
    """Memory: per task the G×G group sums and the within-group sums (float64); in the client both
    folded plus the arriving pair, the log1p group matrix, the rows (n × d float32) and one group's
    SVD (group_size × d float64, u and v)."""
    n_groups, group_size = groups_of(n)
    sums = (n_groups * n_groups + n_groups * group_size) * 8
    client = 2 * sums + n_groups * n_groups * 8 + n * d * 4 + 2 * max(n_groups, group_size) * d * 8
    return fit("hierarchical", sums, client, memory, scheduler, **fit_args)


def hierarchical_task(spec: OperatorSpec, block_group, inv_rank, n: int, group_size: int, n_groups: int):
    """Group-level raw sums D_G (G×G) and within-group log1p diagonal sums (flat, by group)."""
    d_group = np.zeros(n_groups * n_groups, np.float64)
    g_within = np.zeros(n_groups * group_size, np.float64)
    for r0, r1 in block_group:
        coo = load_csr(spec.piece(r0), (r1 - r0, spec.n_vocab)).tocoo()  # raw sums: no transform
        i, j = inv_rank[coo.row + r0], inv_rank[coo.col]
        gi, gj = i // group_size, j // group_size
        d_group += np.bincount(gi * n_groups + gj, weights=coo.data, minlength=d_group.size)
        same = gi == gj
        size = np.minimum(group_size, n - gi[same] * group_size)
        m = (j[same] - i[same]) % size
        g_within += np.bincount(gi[same] * group_size + m, weights=np.log1p(coo.data[same]),
                                minlength=g_within.size)
    return d_group, g_within


def embed(runner, spec: OperatorSpec, groups, inv_rank: np.ndarray, n: int, d: int):
    """``(rows, spectrum, attrs, None)``: group and within-group K0 side by side (rank order)."""
    n_groups, group_size = groups_of(n)
    d_group_dim = d - d // 2
    d_within = d // 2
    d_g, g_w = runner.map_reduce(
        hierarchical_task, [(spec, grp, inv_rank, n, group_size, n_groups) for grp in groups],
        lambda acc, x: x if acc is None else (acc[0] + x[0], acc[1] + x[1]), desc="k0 hierarchical")
    x_group = np.log1p(d_g.reshape(n_groups, n_groups))
    ii, jj = np.nonzero(x_group)
    g_top = diagonal_sums(ii, jj, x_group[ii, jj], n_groups)
    e_group, s_group, _, _ = circulant_embedding(g_top, min(d_group_dim, n_groups))
    rows = np.zeros((n, d), np.float32)
    rank = np.arange(n)
    rows[:, : e_group.shape[1]] = e_group[rank // group_size]
    spectrum_within = np.zeros(d_within)
    for gi in range(n_groups):
        lo, hi = gi * group_size, min(n, (gi + 1) * group_size)
        size = hi - lo
        g = g_w[gi * group_size: gi * group_size + size]
        if not g.any() or d_within == 0:
            continue
        e_w, s_w, _, _ = circulant_embedding(g, min(d_within, size))
        rows[lo:hi, d_group_dim: d_group_dim + e_w.shape[1]] = e_w
        spectrum_within[: s_w.size] = np.maximum(spectrum_within[: s_w.size], s_w)
    spectrum = np.concatenate([np.pad(s_group, (0, d_group_dim - s_group.size)), spectrum_within])
    return rows, spectrum, {"groups": n_groups, "group_size": group_size}, None
