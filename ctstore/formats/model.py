"""The model format: a PhotonicGPT's weights, config and vocabulary map in one directory (docs/design.md §2).

A model directory holds

* ``model.safetensors``: the state dict without ``lm_head.weight`` when the head
  is tied to the token embedding (stored once; the header says
  ``tied: lm_head.weight=transformer.wte.weight``, else ``tied: none``);
* ``config.json``: the :class:`~ctstore.model.GPTConfig` fields plus what the
  stage that wrote it records beside them (``tokenizer``, ``tokenizer_vocab``,
  ``init``, ``recipe``, ...);
* ``vocab.safetensors`` (only for a compact vocabulary): ``vocab_map`` (int64,
  one entry per tokenizer id) = the model id of each tokenizer id, the last
  model id being the unknown token.

Safetensors only: nothing is ever unpickled. A ``model`` artifact is such a
directory; a ``run`` artifact keeps its trained model in ``model/``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from ..errors import CtstoreError
from ..model import GPTConfig, PhotonicGPT
from . import require

__all__ = ["save_model", "load_model", "model_dir", "resolve_model_dir", "inverse_vocab", "WEIGHTS", "CONFIG",
           "VOCAB"]

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
VOCAB = "vocab.safetensors"
RUN_MODEL = "model"  # a run artifact's trained model, beside its metrics and checkpoint


def save_model(model: PhotonicGPT, directory: str, vocab_map: np.ndarray | None = None,
               extra: dict | None = None) -> None:
    """Write ``model`` (and ``vocab_map`` for a compact vocabulary) into ``directory``; ``extra`` joins the config."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    meta = {"tied": "lm_head.weight=transformer.wte.weight"} if model.config.tie_head else {"tied": "none"}
    save_file(state, os.path.join(directory, WEIGHTS), metadata=meta)
    with open(os.path.join(directory, CONFIG), "w") as f:
        json.dump({**model.config.to_dict(), **(extra or {})}, f, indent=2)
    if vocab_map is not None:
        save_file({"vocab_map": torch.from_numpy(vocab_map.astype(np.int64))}, os.path.join(directory, VOCAB))


def load_model(directory: str, device: str = "cpu") -> tuple[PhotonicGPT, np.ndarray | None, dict]:
    """``(model, vocab_map or None, raw config dict)`` of a model directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = os.path.join(directory, WEIGHTS)
    if not os.path.isfile(weights):
        raise CtstoreError(f"{weights}: model weights not found")
    with open(os.path.join(directory, CONFIG)) as f:
        raw = json.load(f)
    model = PhotonicGPT(GPTConfig.from_dict(raw))
    try:
        state = load_file(weights, device=device)
    except (SafetensorError, OSError) as exc:
        raise CtstoreError(f"{weights}: cannot read ({exc})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - ({"lm_head.weight"} if model.config.tie_head else set()):
        raise CtstoreError(f"{weights}: weights do not match config (missing {missing}, unexpected {unexpected})")
    vocab_path = os.path.join(directory, VOCAB)
    vocab_map = load_file(vocab_path)["vocab_map"].numpy() if os.path.exists(vocab_path) else None
    return model.to(device), vocab_map, raw


def model_dir(artifact) -> str:
    """Directory holding model.safetensors for a model or run artifact (of a format version this ctstore reads)."""
    require(artifact, "model", "run", expected="a model or a run")
    return artifact.path if artifact.kind == "model" else os.path.join(artifact.path, RUN_MODEL)


def resolve_model_dir(ref: str, ws) -> str:
    """A model directory from an artifact reference (model or run) or a directory path."""
    if os.path.isdir(ref) and os.path.isfile(os.path.join(ref, WEIGHTS)):
        return ref
    return model_dir(ws.get(ref))


def inverse_vocab(vocab_map: np.ndarray, vocab_size: int) -> np.ndarray:
    """Tokenizer id of each model id of a compact vocabulary (-1 for the unknown token, the last id)."""
    inverse = np.full(vocab_size, -1, np.int64)
    kept = np.flatnonzero(vocab_map != vocab_size - 1)
    inverse[vocab_map[kept]] = kept
    return inverse
