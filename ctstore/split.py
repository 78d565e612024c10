"""The train/validation split of a tokens artifact, shared by every stage that must respect it.

A document belongs to validation when a fixed multiplicative hash of its
``doc_id`` falls below ``fraction`` (in steps of 1/10,000). The rule depends
only on the id, so ``sft`` (which holds the validation documents out) and
``count`` with ``val_fraction`` set (which then counts the training documents
only) agree on every document without sharing any state.
"""

from __future__ import annotations

import numpy as np

__all__ = ["in_validation", "train_documents"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def in_validation(doc_ids: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask: which of ``doc_ids`` are validation documents at ``fraction``."""
    h = (np.asarray(doc_ids).astype(np.uint64) * _GOLDEN) >> np.uint64(40)
    return (h % np.uint64(10_000)) < np.uint64(int(fraction * 10_000))


def train_documents(values: np.ndarray, offsets: np.ndarray, doc_ids: np.ndarray,
                    fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the training documents of a ``(values, offsets)`` chunk; returns the same layout."""
    keep = ~in_validation(doc_ids, fraction)
    lengths = np.diff(offsets)
    per_token = np.repeat(keep, lengths)
    new_offsets = np.zeros(int(keep.sum()) + 1, dtype=offsets.dtype)
    np.cumsum(lengths[keep], out=new_offsets[1:])
    return values[per_token], new_offsets
