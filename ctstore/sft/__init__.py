"""Supervised fine-tuning: the ``sft`` and ``eval`` stages (docs/design.md §5).

``stage`` (parameters, fingerprint, CLI) · ``data`` (document split, batches) ·
``loop`` (AdamW, schedule, early stop) · ``checkpoint`` (single-file resumable
state) · ``eval`` (validation perplexity).
"""

from .data import TokenSplit
from .eval import evaluate, evaluate_artifact, validation_windows
from .stage import SftParams, train_model

__all__ = ["SftParams", "train_model", "evaluate", "evaluate_artifact", "validation_windows", "TokenSplit"]
