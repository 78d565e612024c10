"""SFT checkpoints: one safetensors file per run, replaced atomically after every evaluation.

The file holds the weights (``model.*``, the tied head once), AdamW's moments
(``opt.<param index>.<name>``), the torch and batch-generator RNG states
(``rng.*``) and, in its header, the step and schedule (``ctstore.sft_state``:
step, best loss, evaluations without improvement, elapsed seconds, stop reason,
AdamW's param groups). It is written under a temporary name, fsynced and renamed
once, so a kill never pairs the tensors of one step with the bookkeeping of
another, and an interrupted run on CPU resumes bit-identically.
"""

from __future__ import annotations

import json
import os

import torch

from ..errors import CtstoreError, write_error
from ..location import atomic_path
from ..log import log

__all__ = ["CHECKPOINT", "save_checkpoint", "load_checkpoint"]

CHECKPOINT = "checkpoint.safetensors"
LEGACY_STATE = "checkpoint.json"  # ctstore <= 0.x kept step and schedule here, renamed separately
STATE_KEY = "ctstore.sft_state"


def save_checkpoint(path: str, model, optimizer, gen: torch.Generator, state: dict) -> None:
    """One file, one rename: weights, AdamW moments, RNG states and the step/schedule JSON (metadata).

    The step and schedule travel in the safetensors header of the same file, so no
    kill can pair the tensors of one step with the bookkeeping of another.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()
               if k != "lm_head.weight"}
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for name, value in st.items():
            tensors[f"opt.{idx}.{name}"] = torch.as_tensor(value).detach().contiguous().cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.batches"] = gen.get_state()
    meta = json.dumps({**state, "param_groups": opt["param_groups"]})
    final = os.path.join(path, CHECKPOINT)
    tmp = final
    try:
        with atomic_path(final) as tmp:
            save_file(tensors, tmp, metadata={STATE_KEY: meta, "ctstore.step": str(state["step"])})
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # the bytes are on disk before the rename makes them the checkpoint
            finally:
                os.close(fd)
    except (OSError, SafetensorError) as exc:  # a full disk is the usual cause
        raise write_error(tmp, "SFT checkpoint", exc) from None
    _remove_quietly(os.path.join(path, LEGACY_STATE))


def load_checkpoint(path: str, model, optimizer, gen: torch.Generator) -> dict | None:
    """The state of the last checkpoint (model, optimizer and RNGs restored), or None to start at step 0.

    The step in the metadata must agree with AdamW's own step counters. A
    checkpoint in the old two-file layout is used only when its JSON step agrees
    with the tensors; a torn pair (a kill between its two renames) is discarded
    and training restarts from step 0, which gives the uninterrupted result.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    ck = os.path.join(path, CHECKPOINT)
    legacy = os.path.join(path, LEGACY_STATE)
    if not os.path.exists(ck):
        return None
    try:
        with safe_open(ck, framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(ck)
    except (SafetensorError, OSError) as exc:
        raise CtstoreError(f"{ck}: checkpoint cannot be read ({_first_line(exc)}); remove it to restart "
                           "this run from step 0") from None
    if STATE_KEY in header:
        meta = json.loads(header[STATE_KEY])
    elif os.path.exists(legacy):
        with open(legacy) as f:
            meta = json.load(f)
    else:
        meta = None
    steps = _optimizer_steps(tensors)
    if meta is None or (steps and steps != {int(meta["step"])}):
        log(f"sft: {ck}: checkpoint step {None if meta is None else meta['step']} does not match the "
            f"optimizer's {sorted(steps)} (torn checkpoint); restarting from step 0")
        _remove_quietly(ck)
        _remove_quietly(legacy)
        return None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=False)
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    torch.set_rng_state(tensors["rng.torch"])
    gen.set_state(tensors["rng.batches"])
    return meta


def _optimizer_steps(tensors: dict) -> set[int]:
    """The step counts AdamW recorded per parameter (one value in a consistent checkpoint)."""
    return {int(v.item()) for k, v in tensors.items() if k.startswith("opt.") and k.endswith(".step")}


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__
