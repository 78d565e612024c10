"""Validation perplexity: the one definition that ``sft``, ``ctstore eval`` and the reports use.

Non-overlapping windows of ``block_size`` predicted tokens. Without
``eval_tokens`` they tile the whole validation split, so every validation token
after the first is predicted exactly once. With ``eval_tokens`` N smaller than
the split they are a *systematic sample*: ⌈(N−1)/T⌉ windows at evenly spaced
offsets over the whole split (documents in split order), so every part of the
split, and every validation document longer than the spacing, contributes in
proportion to its length. (Before format 3 of ``sft`` the sample was the first
N tokens, which on the bundled corpus were all Shakespeare.) The loss is the
mean over the predicted tokens. Beside it: the share of predicted tokens
that are ``<unk>`` under a compact vocabulary, the loss over the other tokens,
and the share of distinct validation ids the vocabulary holds.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import CtstoreError
from ..model import PhotonicGPT
from ..formats.model import load_model, model_dir
from .data import TokenSplit

__all__ = ["validation_windows", "evaluate", "evaluate_artifact"]

EVAL_BATCH_TOKENS = 8192  # evaluation batches hold at least this many tokens


EVAL_SAMPLE = "systematic"  # how a stated sample of eval_tokens is drawn; printed by the reports


def validation_windows(n_tokens: int, T: int, max_tokens: int | None = None) -> list[tuple[int, int]]:
    """``(start, n)`` of the evaluation windows: inputs ``data[start:start+n]``, targets shifted by one.

    Without ``max_tokens`` (or when it covers the split): consecutive and non-overlapping,
    ``n = T`` except possibly the last, predicting tokens 1..n_tokens−1 exactly once.
    Otherwise ``k = ⌈(max_tokens−1)/T⌉`` windows of T, starts evenly spaced from 0 to
    ``n_tokens − T − 1`` (non-overlapping, since the spacing is at least T), a systematic
    sample across the whole split rather than its head.
    """
    if max_tokens is not None and max_tokens < n_tokens and n_tokens > T + 1:
        k = max(1, -(-(max_tokens - 1) // T))
        if k * T < n_tokens - 1:
            last = n_tokens - T - 1
            starts = np.linspace(0, last, k).round().astype(np.int64) if k > 1 else np.array([0])
            return [(int(s), T) for s in starts]
    limit = n_tokens if max_tokens is None else min(n_tokens, max_tokens)
    out, start = [], 0
    while start + 1 < limit:
        n = min(T, limit - 1 - start)
        out.append((start, n))
        start += n
    return out


@torch.no_grad()
def evaluate(model: PhotonicGPT, data: np.ndarray, vocab_map, T: int, max_tokens: int | None = None,
             batch_size: int = 16, device: str = "cpu") -> dict:
    """Validation loss and perplexity over :func:`validation_windows` (the one definition used everywhere).

    Returns ``loss`` (mean cross-entropy per predicted token, nats), ``ppl``, ``tokens`` (predicted),
    ``block``; with a compact vocabulary also ``unk_rate`` (share of predicted tokens that are
    ``<unk>``), ``loss_known``/``ppl_known`` (over the other tokens) and ``type_coverage`` (share of the
    distinct ids among the evaluated tokens that the model vocabulary holds).
    """
    model.eval()
    T = max(1, min(T, model.config.block_size))
    windows = validation_windows(len(data), T, max_tokens)
    if not windows:
        raise CtstoreError(f"evaluation needs at least 2 validation tokens, the split has {len(data)}")
    unk = model.config.vocab_size - 1 if vocab_map is not None else None
    batch_size = max(1, min(batch_size, (1 << 25) // (T * model.config.vocab_size)))  # logits <= 128 MiB
    total, known_total, n_tok, n_unk = 0.0, 0.0, 0, 0
    full = [w for w in windows if w[1] == T]
    batch_size = max(batch_size, EVAL_BATCH_TOKENS // T)  # batching changes speed, not the result
    batches = [full[i: i + batch_size] for i in range(0, len(full), batch_size)]
    batches += [[w] for w in windows if w[1] != T]
    for batch in batches:
        chunk = np.stack([np.asarray(data[s: s + n + 1], dtype=np.int64) for s, n in batch])
        if vocab_map is not None:
            chunk = vocab_map[chunk]
        chunk = torch.from_numpy(chunk).to(device)
        x, y = chunk[:, :-1], chunk[:, 1:]
        logits, _ = model(x)
        losses = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                                   reduction="none").double()
        total += float(losses.sum())
        n_tok += losses.numel()
        if unk is not None:
            is_unk = y.reshape(-1) == unk
            n_unk += int(is_unk.sum())
            known_total += float(losses[~is_unk].sum())
    model.train()
    mean = total / n_tok
    out = {"loss": mean, "ppl": float(math.exp(min(mean, 50))), "tokens": n_tok, "block": T,
           "windows": len(windows)}
    if unk is not None:
        ids = np.unique(np.concatenate([np.asarray(data[s + 1: s + n + 1]) for s, n in windows]))
        known = known_total / max(1, n_tok - n_unk)
        out.update(unk_rate=n_unk / n_tok, loss_known=known, ppl_known=float(math.exp(min(known, 50))),
                   type_coverage=float(np.mean(vocab_map[ids] != unk)))
    else:
        out.update(unk_rate=0.0, loss_known=mean, ppl_known=out["ppl"], type_coverage=1.0)
    return out


def evaluate_artifact(artifact, tokens, ws, split: str = "val", val_fraction: float | None = None,
                      block: int | None = None, eval_tokens: int | None = None) -> dict:
    """:func:`evaluate` for a model or run artifact; a run's own split, block and sample are the defaults,
    so evaluating a run reproduces its final logged validation loss."""
    model, vocab_map, raw = load_model(model_dir(artifact))
    if raw.get("tokenizer") != tokens.manifest.get("tokenizer"):
        raise CtstoreError(f"{tokens}: tokenized with {tokens.manifest.get('tokenizer')!r} but the model "
                           f"expects {raw.get('tokenizer')!r}")
    own = artifact.manifest if artifact.kind == "run" else {}
    params = own.get("params", {})
    val_fraction = val_fraction if val_fraction is not None else params.get("val_fraction", 0.1)
    block = block or own.get("eval_block") or model.config.block_size
    eval_tokens = eval_tokens if eval_tokens is not None else params.get("eval_tokens")
    data = TokenSplit(tokens, val_fraction, ws.scratch_dir("tokens", f"{tokens.fingerprint}-val{val_fraction}"))
    return evaluate(model, data.arrays[split], vocab_map, block, eval_tokens)
