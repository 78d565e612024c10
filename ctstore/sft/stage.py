"""Stage ``sft``: model + tokens → ``run`` artifact, and ``ctstore eval`` (docs/design.md §5; Paper 113 §7).

The parameters, the artifact's fingerprint and the CLI live here; the work is
split by concern: :mod:`~ctstore.sft.data` (the document split and batches),
:mod:`~ctstore.sft.loop` (optimiser, schedule, early stop),
:mod:`~ctstore.sft.checkpoint` (the single-file resumable checkpoint) and
:mod:`~ctstore.sft.eval` (validation perplexity, one definition everywhere).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ..errors import CtstoreError
from ..workspace import Workspace, build_artifact, fingerprint
from .eval import evaluate_artifact
from .loop import train_into

__all__ = ["SftParams", "train_model"]

FORMAT_VERSION = 2


@dataclass(frozen=True)
class SftParams:
    steps: int = 200
    batch_size: int = 16
    block_size: int | None = None  # default: the model's
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    freeze_embeddings: bool = False
    freeze: tuple = ()  # parameter names (or prefixes) kept fixed, e.g. "transformer.h.1.attn.c_proj"
    eval_every: int = 50
    eval_tokens: int | None = None  # evaluate on the first N validation tokens (None: the whole split)
    val_fraction: float = 0.1
    target_ppl: float | None = None
    patience: int | None = None
    seed: int = 0

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
    fp = fingerprint("run", FORMAT_VERSION, asdict(params),
                     {"model": model_artifact.fingerprint, "tokens": tokens.fingerprint})

    def build(path: str) -> dict:
        return {"format_version": FORMAT_VERSION,
                **train_into(ws, path, model_artifact, tokens, params, device, _stop_at)}

    return build_artifact(ws, "run", fp, build, force=force, keep_partial=True)[0]


def _check_tokenizer(model_artifact, tokens) -> None:
    a, b = model_artifact.manifest.get("tokenizer"), tokens.manifest.get("tokenizer")
    if a != b:
        raise CtstoreError(f"{tokens}: tokenized with {b!r} but model {model_artifact.fingerprint} "
                           f"was built for {a!r}")


def add_parser(sub, common) -> None:
    s = sub.add_parser("sft", help="fine-tune a model on tokens -> run artifact")
    s.add_argument("model", help="model artifact fingerprint")
    s.add_argument("--tokens", required=True, help="tokens artifact fingerprint")
    for name, default in (("steps", 200), ("batch-size", 16), ("warmup", 20), ("eval-every", 50), ("seed", 0)):
        s.add_argument(f"--{name}", type=int, default=default)
    s.add_argument("--eval-tokens", type=int, default=None,
                   help="evaluate on the first N validation tokens (default: the whole validation split)")
    s.add_argument("--block-size", type=int, default=None)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--freeze-embeddings", action="store_true")
    s.add_argument("--target-ppl", type=float, default=None)
    s.add_argument("--patience", type=int, default=None)
    s.add_argument("--val-fraction", type=float, default=0.1)
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    common(s)
    e = sub.add_parser("eval", help="perplexity of a model (or run) on a tokens split")
    e.add_argument("model", help="model or run artifact fingerprint")
    e.add_argument("--tokens", required=True)
    e.add_argument("--split", default="val", choices=["train", "val"])
    e.add_argument("--val-fraction", type=float, default=None, help="default: the run's, else 0.1")
    e.add_argument("--block-size", type=int, default=None, help="window length (default: the run's, else the model's)")
    e.add_argument("--eval-tokens", type=int, default=None, help="first N tokens of the split (default: the run's, "
                   "else all)")
    common(e, compute=False)


def run_cli(args, ws):
    tokens = ws.get(args.tokens, kind="tokens")
    if args.command == "eval":
        art = ws.get(args.model)
        result = evaluate_artifact(art, tokens, ws, args.split, args.val_fraction, args.block_size, args.eval_tokens)
        print(json.dumps({"model": art.fingerprint, "tokens": tokens.fingerprint, "split": args.split, **result}))
        return None
    model_art = ws.get(args.model, kind="model")
    params = SftParams(steps=args.steps, batch_size=args.batch_size, block_size=args.block_size, lr=args.lr,
                       warmup=args.warmup, freeze_embeddings=args.freeze_embeddings, eval_every=args.eval_every,
                       eval_tokens=args.eval_tokens, val_fraction=args.val_fraction, target_ppl=args.target_ppl,
                       patience=args.patience, seed=args.seed)
    return train_model(model_art, tokens, ws, params=params, force=args.force, device=args.device)
