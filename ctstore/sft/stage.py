"""Stage ``sft``: model + tokens → ``run`` artifact, and ``ctstore eval`` (docs/design.md §5; Paper 113 §7).

The parameters, the artifact's fingerprint and the CLI live here; the work is
split by concern: :mod:`~ctstore.sft.data` (the document split and batches),
:mod:`~ctstore.sft.loop` (optimiser, schedule, early stop),
:mod:`~ctstore.sft.checkpoint` (the single-file resumable checkpoint) and
:mod:`~ctstore.sft.eval` (validation perplexity, one definition everywhere).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import CtstoreError
from ..stage import Input, Option, Stage, param
from ..units import FRACTION, NON_NEGATIVE, POSITIVE, number_flag
from ..workspace import Workspace, build_artifact
from .eval import evaluate_artifact
from .loop import train_into

__all__ = ["SftParams", "train_model"]

FORMAT_VERSION = 2
CODE_VERSION = 3  # fingerprint version; 3: a stated eval_tokens sample is spread over the whole split (was its head)


@dataclass(frozen=True)
class SftParams:
    steps: int = param(200, "optimizer steps", parse=POSITIVE)
    batch_size: int = param(16, "sequences per step", parse=POSITIVE)
    block_size: int | None = param(None, "sequence length (default: the model's)",
                                   parse=number_flag(int, 2, what="an integer >= 2"))
    lr: float = param(1e-3, "peak learning rate", parse=number_flag(float, 0, low_open=True,
                                                                    what="a positive finite number"))
    min_lr_ratio: float = param(0.1, cli=False)
    warmup: int = param(20, "linear warmup steps", parse=NON_NEGATIVE)
    weight_decay: float = param(0.1, cli=False)
    grad_clip: float = param(1.0, cli=False)
    freeze_embeddings: bool = param(False, "keep the token embedding fixed")
    # parameter names (or prefixes) kept fixed, e.g. "transformer.h.1.attn.c_proj"
    freeze: tuple = param((), cli=False)
    eval_every: int = param(50, "steps between evaluations", parse=POSITIVE)
    eval_tokens: int | None = param(None, "evaluate on a sample of about N validation tokens, windows spread evenly "
                                    "over the whole split (default: the whole validation split)", parse=number_flag(int, 2, what="an integer >= 2"))
    val_fraction: float = param(0.1, "validation fraction of the document split", parse=FRACTION)
    target_ppl: float | None = param(None, "stop once validation perplexity reaches this",
                                     parse=number_flag(float, 1, what="a finite number >= 1"))
    patience: int | None = param(None, "stop after this many evaluations without improvement", parse=POSITIVE)
    seed: int = param(0, "random seed", parse=NON_NEGATIVE)

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise CtstoreError("sft: steps, batch size and eval interval must be positive")
        if not 0 < self.val_fraction < 1:
            raise CtstoreError("sft: --val-fraction must be between 0 and 1")
        if self.eval_tokens is not None and self.eval_tokens < 2:
            raise CtstoreError("sft: --eval-tokens must be at least 2")


def train_model(model_artifact, tokens, workspace: Workspace | None = None, *, params: SftParams | None = None,
                force: bool = False, device: str | None = None, _stop_at: int | None = None):
    """Fine-tune a model artifact on a tokens artifact; returns a ``run`` artifact."""
    ws = workspace or model_artifact.workspace
    params = params or SftParams()
    if not ws.is_local:
        raise CtstoreError("sft writes checkpoints locally: use a local --workspace for runs")
    _check_tokenizer(model_artifact, tokens)
    fp = STAGES[0].fingerprint(params, {"model": model_artifact.fingerprint, "tokens": tokens.fingerprint})

    def build(path: str) -> dict:
        return {"format_version": FORMAT_VERSION,
                **train_into(ws, path, model_artifact, tokens, params, device, _stop_at)}

    return build_artifact(ws, "run", fp, build, force=force, keep_partial=True)[0]


def _check_tokenizer(model_artifact, tokens) -> None:
    a, b = model_artifact.manifest.get("tokenizer"), tokens.manifest.get("tokenizer")
    if a != b:
        raise CtstoreError(f"{tokens}: tokenized with {b!r} but model {model_artifact.fingerprint} "
                           f"was built for {a!r}")


def _eval_stage(ws, inputs, params, opts) -> None:
    art, tokens = inputs["model"], inputs["tokens"]
    result = evaluate_artifact(art, tokens, ws, opts["split"], opts["val_fraction"], opts["block_size"],
                               opts["eval_tokens"])
    print(json.dumps({"model": art.fingerprint, "tokens": tokens.fingerprint, "split": opts["split"], **result}))


STAGES = (
    Stage(name="sft", kind="run", params=SftParams, code_version=CODE_VERSION,
          help="fine-tune a model on tokens -> run artifact",
          inputs=(Input("model", "model", "model artifact fingerprint (or unique prefix)"),
                  Input("tokens", "tokens", "tokens artifact fingerprint", flag=True)),
          options=(Option("--device", "cpu or cuda (default: cuda when available)"),),
          run=lambda ws, inputs, params, opts: train_model(inputs["model"], inputs["tokens"], ws, params=params,
                                                           force=opts["force"], device=opts["device"])),
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
