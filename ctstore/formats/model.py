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

import numpy as np

from ..errors import CtstoreError
from ..location import Location
from . import require, write_file

__all__ = ["save_model", "load_model", "model_dir", "resolve_model_dir", "inverse_vocab", "as_location", "WEIGHTS",
           "CONFIG", "VOCAB"]

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
VOCAB = "vocab.safetensors"
RUN_MODEL = "model"  # a run artifact's trained model, beside its metrics and checkpoint


def as_location(directory: Location | str) -> Location:
    """``directory`` as a :class:`Location` (a string is a local path or an fsspec URL without options)."""
    return directory if isinstance(directory, Location) else Location.of(str(directory))


def save_model(model, directory: Location | str, vocab_map: np.ndarray | None = None,
               extra: dict | None = None) -> None:
    """Write ``model`` (and ``vocab_map`` for a compact vocabulary) into ``directory``; ``extra`` joins the config.

    ``directory`` is a :class:`Location` (or a local path): a remote workspace's
    model goes to its object store, never to a local directory named after it.
    """
    import torch
    from safetensors.torch import save

    where = as_location(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    meta = {"tied": "lm_head.weight=transformer.wte.weight"} if model.config.tie_head else {"tied": "none"}
    write_file(where.child(WEIGHTS), save(state, metadata=meta))
    write_file(where.child(CONFIG), json.dumps({**model.config.to_dict(), **(extra or {})}, indent=2).encode())
    if vocab_map is not None:
        write_file(where.child(VOCAB), save({"vocab_map": torch.from_numpy(vocab_map.astype(np.int64))}))


def load_model(directory: Location | str, device: str = "cpu"):
    """``(model, vocab_map or None, raw config dict)`` of a model directory (a :class:`Location` or local path)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from ..model import GPTConfig, PhotonicGPT

    where = as_location(directory)
    weights = where.child(WEIGHTS)
    try:
        data = weights.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise CtstoreError(f"{weights}: model weights not found") from None
    try:
        raw = json.loads(where.child(CONFIG).read_bytes())
    except FileNotFoundError:
        raise CtstoreError(f"{where.child(CONFIG)}: model config not found") from None
    except ValueError as exc:
        raise CtstoreError(f"{where.child(CONFIG)}: not valid JSON ({exc})") from None
    model = PhotonicGPT(GPTConfig.from_dict(raw))
    try:
        state = load(data)
    except (SafetensorError, OSError) as exc:
        raise CtstoreError(f"{weights}: cannot read ({exc})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - ({"lm_head.weight"} if model.config.tie_head else set()):
        raise CtstoreError(f"{weights}: weights do not match config (missing {missing}, unexpected {unexpected})")
    vocab = where.child(VOCAB)
    vocab_map = load(vocab.read_bytes())["vocab_map"].numpy() if vocab.exists() else None
    return model.to(device), vocab_map, raw


def model_dir(artifact) -> Location:
    """Where model.safetensors is for a model or run artifact (of a format version this ctstore reads)."""
    require(artifact, "model", "run", expected="a model or a run")
    return artifact.location if artifact.kind == "model" else artifact.location.child(RUN_MODEL)


def load_from_artifact(artifact, device: str = "cpu"):
    """``load_model`` of a model or run artifact (the model kind's reader)."""
    return load_model(model_dir(artifact), device)


def is_model_directory(ref: str) -> bool:
    """True when ``ref`` is a local directory holding a ctstore model (``model.safetensors`` + ``config.json``)."""
    import os

    return os.path.isdir(ref) and os.path.isfile(os.path.join(ref, WEIGHTS))


def resolve_model_dir(ref: str, ws) -> Location:
    """A model directory from an artifact reference (model or run) or a directory path."""
    if is_model_directory(ref):
        return Location.of(ref)
    return model_dir(ws.get(ref))


def inverse_vocab(vocab_map: np.ndarray, vocab_size: int) -> np.ndarray:
    """Tokenizer id of each model id of a compact vocabulary (-1 for the unknown token, the last id)."""
    inverse = np.full(vocab_size, -1, np.int64)
    kept = np.flatnonzero(vocab_map != vocab_size - 1)
    inverse[vocab_map[kept]] = kept
    return inverse
