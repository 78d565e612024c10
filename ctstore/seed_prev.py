"""``seed --init bigram_prev``: the bigram initialisation plus a previous-token head (issue 18).

The arithmetic and the layout of the residual stream are in :mod:`ctstore.previous_token`.
This module writes them into a :class:`~ctstore.model.PhotonicGPT` with an untied head:

* token embedding: the LayerNorm preimage of a rank-``d1 − 2`` factorisation ``A Bᵀ`` of the
  Witten–Bell lag-1 log-conditionals, in the first ``d1 = d − k2 − 1`` coordinates, RMS 1
  over all d coordinates;
* layer 0, head 0: constant query/key biases that attend to position i − 1 under rotary
  embeddings, value/output that write ``α · ln_1(X[u]) W`` into the last ``k2 + 1``
  coordinates (``k2 = d // LAG2_RANK_FRACTION``);
* every residual projection otherwise zero, so blocks 1.. start as the identity;
* the untied head: ``B`` on the bigram coordinates, ``β D / α`` on the lag-2 coordinates, both
  scaled for the final LayerNorm's average scale.

Step-0 logits are then ``≈ A[x_i]·B + β C[x_{i−1}]·D`` (``C = ln_1(X) W``); the approximation is
the attention mass off i − 1 and the per-token variation of the final LayerNorm's scale.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import CtstoreError
from .log import log
from .model import _rope_cache
from .previous_token import lag2_factors, previous_token_biases, zero_mean_basis
from .seeding import bigram_factors, layernorm_preimage

__all__ = ["set_bigram_prev", "previous_token_mass"]


def set_bigram_prev(model, unigram: np.ndarray, lag1, lag2, vocab_map, seed: int,
                    weight: float | None = None) -> dict:
    """Seed ``model`` in place (see the module docstring); returns the report fields.

    ``weight`` is β (default ``seed.LAG2_WEIGHT``).
    """
    from .analysis.baselines import compact_counts, log_conditionals, unigram_probs, witten_bell
    from .seed import (BIGRAM_FIT_STEPS, LAG2_RANK_FRACTION, LAG2_RMS, LAG2_WEIGHT, PREV_TOKEN_MASS,
                       start_as_bigram)

    beta = LAG2_WEIGHT if weight is None else float(weight)
    cfg = model.config
    d, hd = cfg.n_embd, cfg.n_embd // cfg.n_head
    k2 = min(max(1, d // LAG2_RANK_FRACTION), hd)
    d1 = d - k2 - 1
    c1 = compact_counts(unigram, lag1, vocab_map)
    c2 = compact_counts(unigram, lag2, vocab_map)
    if c1.V != cfg.vocab_size:
        raise CtstoreError(f"init bigram_prev: counts map to {c1.V} ids, the model has {cfg.vocab_size}")
    eps_f = model.transformer.ln_f.eps
    total1, _t, _p = witten_bell(c1)
    A, B, info = bigram_factors(log_conditionals(c1), total1 + 1.0, d1 - 2, BIGRAM_FIT_STEPS, seed)
    rms1 = float(np.sqrt(d / d1))  # RMS 1 over all d coordinates
    X1, W1 = layernorm_preimage(A, B, d1, rms=rms1, eps=eps_f)
    X = np.concatenate([X1, np.zeros((X1.shape[0], d - d1))], axis=1)
    block0 = model.transformer.h[0]
    with torch.no_grad():
        Z = block0.ln_1(torch.as_tensor(X, dtype=torch.float32)).double().numpy()
    total2, _t2, _p2 = witten_bell(c2)
    R = log_conditionals(c2) - np.log(unigram_probs(c2))[None, :]
    R -= R.mean(axis=1, keepdims=True)
    Wreg, D, fit2 = lag2_factors(Z, R, total2 + 1.0, k2)
    k2 = Wreg.shape[1]
    pi2 = (total2 + 1.0) / (total2 + 1.0).sum()
    C = Z @ Wreg
    alpha = LAG2_RMS * np.sqrt(d) / np.sqrt(float(pi2 @ (C ** 2).sum(axis=1)) + 1e-30)
    Q = np.zeros((d, k2))
    Q[d1:] = zero_mean_basis(d - d1, k2)
    ln_scale = np.sqrt(1.0 + LAG2_RMS ** 2 + eps_f)  # 1 / the final LayerNorm's average scale
    head = W1 * ln_scale / np.sqrt(rms1 ** 2 + eps_f)
    head = np.concatenate([head, np.zeros((head.shape[0], d - d1))], axis=1) + (beta / alpha) * ln_scale * D @ Q.T
    q0, k0, lam = previous_token_biases(hd, cfg.block_size, cfg.rope_base, PREV_TOKEN_MASS)
    f32 = dict(dtype=torch.float32)
    start_as_bigram(model, X, head)
    with torch.no_grad():
        attn = block0.attn.c_attn
        if attn.bias is None:
            raise CtstoreError("init bigram_prev needs a config with biases (the previous-token head's query/key)")
        block0.ln_1.weight.fill_(1.0)
        if block0.ln_1.bias is not None:
            block0.ln_1.bias.zero_()
        for rows in (slice(0, hd), slice(d, d + hd), slice(2 * d, 2 * d + hd)):
            attn.weight[rows] = 0.0
            attn.bias[rows] = 0.0
        attn.bias[0:hd] = torch.as_tensor(q0, **f32)
        attn.bias[d: d + hd] = torch.as_tensor(k0, **f32)
        attn.weight[2 * d: 2 * d + k2] = torch.as_tensor((alpha * Wreg).T, **f32)
        block0.attn.c_proj.weight[:, :k2] = torch.as_tensor(Q, **f32)
    log(f"seed: bigram_prev: lag-1 rank {d1 - 2} (weighted CE {info['fit_ce']:.4f} nats), lag-2 rank {k2} "
        f"(R² {fit2['lag2_r2_rank']:.3f} of the row-centred log-ratio, {fit2['lag2_r2_linear']:.3f} linear "
        f"bound), beta {beta}, previous-token score scale {lam:.2f}")
    return {"bigram_fit": {k: float(v) for k, v in info.items()}, "bigram_rank": d1 - 2,
            "lag2_fit": {k: float(v) for k, v in fit2.items()}, "lag2_weight": beta,
            "previous_token_scale": lam, "previous_token_target_mass": PREV_TOKEN_MASS}


@torch.no_grad()
def previous_token_mass(model, idx: torch.Tensor, layer: int = 0, head: int = 0) -> float:
    """Mean attention mass that ``head`` of ``layer`` puts on position i − 1, over positions i ≥ 1 of the
    windows ``idx`` (B × T), recomputed from the model's own weights (not from the seeding arithmetic)."""
    from .model import _apply_rope

    cfg = model.config
    B, T = idx.shape
    hd = cfg.n_embd // cfg.n_head
    x = model.transformer.wte(idx)
    cos, sin = _rope_cache(T, hd, cfg.rope_base, idx.device)
    for block in model.transformer.h[:layer]:
        x = block(x, cos, sin)
    blk = model.transformer.h[layer]
    q, k, _v = blk.attn.c_attn(blk.ln_1(x)).split(cfg.n_embd, dim=2)
    q = _apply_rope(q.view(B, T, cfg.n_head, hd).transpose(1, 2), cos, sin)[:, head]
    k = _apply_rope(k.view(B, T, cfg.n_head, hd).transpose(1, 2), cos, sin)[:, head]
    scores = q @ k.transpose(-1, -2) / np.sqrt(hd)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    att = scores.softmax(dim=-1)
    return float(att.diagonal(offset=-1, dim1=-2, dim2=-1).mean())
