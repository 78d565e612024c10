"""How far back each layer attends: the test of Paper 51's "early layers attend locally, late layers globally".

For a window of T tokens, layer l's attention weights ``a_ij`` (causal, RoPE, per
head) give the mean attention distance ``Σ_j a_ij (i − j)`` of query i; averaged
over heads, queries and windows it is one number per layer, in tokens. Uniform
causal attention over a window of T tokens gives (i/2 averaged over i) ≈ T/4;
attention to the previous token gives 1.
"""

from __future__ import annotations

import numpy as np
import torch

from ..model import PhotonicGPT, _apply_rope, _rope_cache

__all__ = ["attention_distances"]


@torch.no_grad()
def attention_distances(model: PhotonicGPT, idx: torch.Tensor) -> list[float]:
    """Mean attention distance (tokens) of every layer for the batch ``idx`` (B × T model ids)."""
    model.eval()
    c = model.config
    B, T = idx.shape
    cos, sin = _rope_cache(T, c.n_embd // c.n_head, c.rope_base, idx.device)
    x = model.transformer.wte(idx)
    i = torch.arange(T)
    dist = (i[:, None] - i[None, :]).clamp(min=0).float()
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    out = []
    for block in model.transformer.h:
        h = block.ln_1(x)
        q, k, _v = block.attn.c_attn(h).split(c.n_embd, dim=2)
        shape = (B, T, c.n_head, c.n_embd // c.n_head)
        q, k = (_apply_rope(t.view(shape).transpose(1, 2), cos, sin) for t in (q, k))
        scores = (q @ k.transpose(-1, -2)) / np.sqrt(q.shape[-1])
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        out.append(float((weights * dist).sum(dim=-1).mean()))
        x = block(x, cos, sin)
    model.train()
    return out
