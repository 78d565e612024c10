"""Stage ``k0``: embeddings of a count store (K0 circulant, fft2, SVD of X or PPMI, hierarchical).

Layout: :mod:`.plan` (parameters and plans, no I/O) → :mod:`.stage` (the
driver and the command line) → one method module per operator
(:mod:`.circulant`, :mod:`.fft2`, :mod:`.sparse`, :mod:`.hierarchical`), all
reading the weighted operator blocks of :mod:`.blocks`, sized by the memory
model of :mod:`.budget`. The linear algebra (:mod:`.rsvd`) takes matmul
functions; :mod:`.products` runs them over blocks on the cluster.
"""

from ..formats.embeddings import load_embeddings
from .plan import K0Params, K0Plan, plan_k0, plan_memory
from .stage import OPERATOR_NOTES, embed_counts

__all__ = ["K0Params", "K0Plan", "plan_k0", "plan_memory", "embed_counts", "load_embeddings", "OPERATOR_NOTES"]
