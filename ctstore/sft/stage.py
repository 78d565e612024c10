"""Stage ``sft``: model + tokens → ``run`` artifact, and ``ctstore eval`` (docs/design.md §5; Paper 113 §7).

The parameters, the artifact's fingerprint and the CLI live here; the work is
split by concern: :mod:`~ctstore.sft.data` (the document split and batches),
:mod:`~ctstore.sft.loop` (optimiser, schedule, early stop),
:mod:`~ctstore.sft.checkpoint` (the single-file resumable checkpoint) and
:mod:`~ctstore.sft.eval` (validation perplexity, one definition everywhere).

On a remote workspace (``memory://``, S3) training runs in a local working
copy (``ws.scratch_dir("run", fp)``: checkpoint, metrics, model), because the
checkpoint is replaced after every evaluation and object stores have no atomic
rename; an interrupted run resumes from that copy on the same machine. The
finished run is copied into the artifact through its Location, then published.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

from ..errors import CtstoreError
from ..formats import copy_directory
from ..stage import Input, Option, Params, Stage, param
from ..units import FRACTION, NON_NEGATIVE, POSITIVE, number_flag
from ..workspace import Workspace, build_artifact
from .eval import evaluate_artifact
from .loop import train_into

__all__ = ["SftParams", "train_model"]

FORMAT_VERSION = 2
CODE_VERSION = 3  # fingerprint version; 3: a stated eval_tokens sample is spread over the whole split (was its head)


def _names(value) -> tuple:
    """``freeze``: parameter names or prefixes (a list of strings)."""
    import argparse

    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise argparse.ArgumentTypeError(f"must be a list of parameter names, not {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class SftParams(Params):
    steps: int = param(200, "optimizer steps", parse=POSITIVE)
    batch_size: int = param(16, "sequences per step", parse=POSITIVE)
    block_size: int | None = param(None, "sequence length (default: the model's)",
                                   parse=number_flag(int, 2, what="an integer >= 2"))
    lr: float = param(1e-3, "peak learning rate", parse=number_flag(float, 0, low_open=True,
                                                                    what="a positive finite number"))
    min_lr_ratio: float = param(0.1, parse=number_flag(float, 0, 1), cli=False)
    warmup: int = param(20, "linear warmup steps", parse=NON_NEGATIVE)
    weight_decay: float = param(0.1, parse=number_flag(float, 0), cli=False)
    grad_clip: float = param(1.0, parse=number_flag(float, 0), cli=False)
    freeze_embeddings: bool = param(False, "keep the token embedding fixed")
    # parameter names (or prefixes) kept fixed, e.g. "transformer.h.1.attn.c_proj"
    freeze: tuple = param((), parse=_names, cli=False)
    eval_every: int = param(50, "steps between evaluations", parse=POSITIVE)
    eval_tokens: int | None = param(None, "evaluate on a sample of about N validation tokens, windows spread evenly "
                                    "over the whole split (default: the whole validation split)",
                                    parse=number_flag(int, 2, what="an integer >= 2"))
    val_fraction: float = param(0.1, "validation fraction of the document split", parse=FRACTION)
    target_ppl: float | None = param(None, "stop once validation perplexity reaches this",
                                     parse=number_flag(float, 1, what="a finite number >= 1"))
    patience: int | None = param(None, "stop after this many evaluations without improvement", parse=POSITIVE)
    seed: int = param(0, "random seed", parse=NON_NEGATIVE)


def train_model(model_artifact, tokens, workspace: Workspace | None = None, *, params: SftParams | None = None,
                force: bool = False, device: str | None = None, _stop_at: int | None = None,
                memory: str | int | None = None):
    """Fine-tune a model artifact on a tokens artifact; returns a ``run`` artifact."""
    ws = workspace or model_artifact.workspace
    params = params or SftParams()
    _check_tokenizer(model_artifact, tokens)
    _check_block_size(model_artifact, params)
    fp = STAGES[0].fingerprint(params, {"model": model_artifact.fingerprint, "tokens": tokens.fingerprint})

    def build(path: str) -> dict:
        if ws.is_local:  # train in the artifact's directory: its checkpoint is what a rerun resumes from
            return {"format_version": FORMAT_VERSION,
                    **train_into(ws, path, model_artifact, tokens, params, device, _stop_at, memory)}
        # a remote workspace: train in a local working copy (checkpoints are replaced after every evaluation,
        # which an object store cannot rename atomically), resumable on this machine, then copy it in
        work = ws.scratch_dir("run", fp)
        body = {"format_version": FORMAT_VERSION, **train_into(ws, work, model_artifact, tokens, params, device,
                                                               _stop_at, memory)}
        copy_directory(work, ws.artifact_location("run", fp))
        return body

    run = build_artifact(ws, "run", fp, build, force=force, keep_partial=True)[0]
    if not ws.is_local:
        shutil.rmtree(ws.scratch_dir("run", fp), ignore_errors=True)
    return run


def _check_tokenizer(model_artifact, tokens) -> None:
    a, b = model_artifact.manifest.get("tokenizer"), tokens.manifest.get("tokenizer")
    if a != b:
        raise CtstoreError(f"{tokens}: tokenized with {b!r} but model {model_artifact.fingerprint} "
                           f"was built for {a!r}")


def _check_block_size(model_artifact, params: SftParams) -> None:
    """A block size beyond the model's context is refused before any work (it would train shorter windows
    than the run records)."""
    from ..formats.model import CONFIG, model_dir

    if params.block_size is None:
        return
    try:
        with model_dir(model_artifact).child(CONFIG).open("r") as f:
            context = int(json.load(f)["block_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # an unreadable model fails, in one line, where it is loaded
    if params.block_size > context:
        raise CtstoreError(f"sft: --block-size {params.block_size} exceeds the context of model "
                           f"{model_artifact.fingerprint} ({context} tokens)")


def _eval_stage(ws, inputs, params, opts) -> None:
    art, tokens = inputs["model"], inputs["tokens"]
    result = evaluate_artifact(art, tokens, ws, opts["split"], opts["val_fraction"], opts["block_size"],
                               opts["eval_tokens"])
    print(json.dumps({"model": art.fingerprint, "tokens": tokens.fingerprint, "split": opts["split"], **result}))


STAGES = (
    Stage(name="sft", kind="run", params=SftParams, code_version=CODE_VERSION, format_version=FORMAT_VERSION,
          help="fine-tune a model on tokens -> run artifact",
          inputs=(Input("model", "model", "model artifact fingerprint (or unique prefix)"),
                  Input("tokens", "tokens", "tokens artifact fingerprint", flag=True)),
          options=(Option("--device", "cpu or cuda (default: cuda when available)"),),
          run=lambda ws, inputs, params, opts: train_model(inputs["model"], inputs["tokens"], ws, params=params,
                                                           force=opts["force"], device=opts["device"],
                                                           memory=opts["memory"])),
    Stage(name="eval", kind=None, params=None, compute=False, run=_eval_stage,
          help="perplexity of a model (or run) on a tokens split",
          inputs=(Input("model", "any", "model or run artifact fingerprint"),
                  Input("tokens", "tokens", "tokens artifact fingerprint", flag=True)),
          options=(Option("--split", "which split of the documents", default="val", choices=("train", "val")),
                   Option("--val-fraction", "default: the run's, else 0.1", parse=FRACTION),
                   Option("--block-size", "window length (default: the run's, else the model's)",
                          parse=number_flag(int, 2, what="an integer >= 2")),
                   Option("--eval-tokens", "first N tokens of the split (default: the run's, else all)",
                          parse=number_flag(int, 2, what="an integer >= 2")))),
)
