"""The SFT training loop (docs/design.md §5; Paper 113 §7).

AdamW (decay on matrices only), linear warmup then cosine decay to
``min_lr_ratio`` of the peak rate, gradient clipping, frozen parameters by name,
an optional frozen token embedding (and so the tied head; with a compact
vocabulary every row but ``<unk>``, which has no statistics of its own and
trains in every arm alike), bf16 autocast on CUDA. Every ``eval_every`` steps:
:func:`~ctstore.sft.eval.evaluate`, a line in ``metrics.jsonl``, early stopping
when perplexity reaches ``target_ppl`` or has not improved for ``patience``
evaluations, and a checkpoint (:mod:`ctstore.sft.checkpoint`) from which an
interrupted run resumes.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict
from typing import TYPE_CHECKING

import torch

from ..errors import CtstoreError
from ..formats.model import RUN_MODEL, load_model, model_dir, save_model
from ..formats.run import METRICS, format_metrics, parse_metrics
from ..log import log, progress
from ..model import PhotonicGPT
from .checkpoint import load_checkpoint, save_checkpoint
from .data import TokenSplit, batch
from .eval import evaluate
from .throughput import throughput

if TYPE_CHECKING:
    from .stage import SftParams

__all__ = ["train_into", "lr_at", "optimizer_for", "plan_step_bytes", "resolve_device"]


def resolve_device(device: str | None) -> str:
    """``device`` checked before any work: ``cuda`` without a GPU or an unknown name is a one-line error."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise CtstoreError(f"--device {device}: not a torch device (cpu, cuda, cuda:N)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise CtstoreError(f"--device {device}: no CUDA GPU is available to torch here; use --device cpu")
    if kind not in ("cpu", "cuda"):
        raise CtstoreError(f"--device {device}: sft runs on cpu or cuda")
    return device


def plan_step_bytes(config, batch_size: int, T: int, device: str) -> dict:
    """Lower bounds of the bytes one training step needs, on the host and on the device.

    Host: the sampled windows as int64 (index, window stack, tensor; 3 copies).
    Activations (on the host for ``cpu``): the float32 logits ``B·T·V`` and the
    residual stream kept per layer for the backward pass (``~8·d`` floats per
    token and layer) -- far below the real peak, so a refusal is never wrong;
    what it catches is a batch that could never fit (``--batch-size 100000000``
    used to grow 1 GB every 5 s until the machine ran out).
    """
    tokens = batch_size * (T + 1)
    host = 3 * 8 * tokens
    activations = 4 * batch_size * T * (config.vocab_size + 8 * config.n_embd * config.n_layer)
    return {"host": host + (activations if device == "cpu" else 0),
            "device": activations if device != "cpu" else 0}


def _check_step_fits(model, p: SftParams, T: int, device: str, memory: str | int | None) -> None:
    from ..units import format_bytes, parse_memory

    need = plan_step_bytes(model.config, p.batch_size, T, device)
    if memory is not None and need["host"] > parse_memory(memory):
        raise CtstoreError(f"sft --batch-size {p.batch_size}: one step of {p.batch_size} x {T + 1} tokens needs "
                           f"at least {format_bytes(need['host'])}, --memory {memory} allows "
                           f"{format_bytes(parse_memory(memory))}; lower --batch-size or --block-size, or raise "
                           "--memory")
    if need["device"] and device.startswith("cuda"):
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        if need["device"] > total:
            raise CtstoreError(f"sft --batch-size {p.batch_size}: one step needs at least "
                               f"{format_bytes(need['device'])} on {device}, which has {format_bytes(total)}; "
                               "lower --batch-size or --block-size")


def _finite(value: float, what: str, step: int, lr: float) -> None:
    """A non-finite loss stops the run: nothing is published (a NaN model is never a result)."""
    if not math.isfinite(value):
        raise CtstoreError(f"sft: {what} is {value} at step {step} (learning rate {lr:g}): training diverged; "
                           "nothing was published (lower --lr)")


def lr_at(step: int, p: SftParams) -> float:
    """Learning rate of ``step``: linear warmup to ``p.lr``, then cosine decay to ``p.min_lr_ratio · p.lr``."""
    if step < p.warmup:
        return p.lr * (step + 1) / p.warmup
    done = (step - p.warmup) / max(1, p.steps - p.warmup)
    return p.lr * (p.min_lr_ratio + (1 - p.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, done))))


def optimizer_for(model: PhotonicGPT, p: SftParams) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on matrices only."""
    params = [q for q in model.parameters() if q.requires_grad]
    decay = [q for q in params if q.dim() >= 2]
    no_decay = [q for q in params if q.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": p.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=p.lr, betas=(0.9, 0.95))


def train_into(ws, path, model_artifact, tokens, p: SftParams, device, stop_at, memory=None) -> dict:
    """Train in the run directory ``path`` (resuming from its checkpoint); returns the run's manifest fields.

    ``memory`` (``--memory``) bounds one step's planned bytes, checked before
    the token cache is built or anything is allocated.
    """
    device = resolve_device(device)
    model, vocab_map, raw = load_model(model_dir(model_artifact), device)
    T = min(p.block_size or model.config.block_size, model.config.block_size)
    _check_step_fits(model, p, T, device, memory)
    split = TokenSplit(tokens, p.val_fraction,
                       ws.scratch_dir("tokens", f"{tokens.fingerprint}-val{p.val_fraction}"))
    train, val = split.arrays["train"], split.arrays["val"]
    T = min(T, len(train) - 2, len(val) - 2)
    frozen_rows = None
    if p.freeze_embeddings:
        if vocab_map is not None:  # compact vocabulary: the <unk> row trains in every arm, frozen or not
            frozen_rows = model.transformer.wte.weight.detach()[:-1].clone()
        else:
            model.transformer.wte.weight.requires_grad_(False)
    frozen = [name for name, q in model.named_parameters() if any(name.startswith(f) for f in p.freeze)]
    if p.freeze and not frozen:
        raise CtstoreError(f"sft: --freeze {list(p.freeze)} matches no parameter of the model")
    for name, q in model.named_parameters():
        if name in frozen:
            q.requires_grad_(False)
    optimizer = optimizer_for(model, p)
    gen = torch.Generator().manual_seed(p.seed)
    torch.manual_seed(p.seed)
    meta = load_checkpoint(path, model, optimizer, gen) or {"step": 0, "best": None, "bad_evals": 0,
                                                            "elapsed": 0.0, "stopped": None}
    if meta["step"]:
        log(f"sft: resuming from step {meta['step']}")
    metrics_path = os.path.join(path, METRICS)
    _truncate_metrics(metrics_path, meta["step"])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()
    tokens_per_step = p.batch_size * T
    flops_per_token = model.flops_per_token()
    log(f"sft: {model.num_params() / 1e6:.2f}M params, {p.steps} steps x {tokens_per_step} tokens, "
        f"train {len(train)} / val {len(val)} tokens, device {device}")
    bar = progress(total=p.steps, initial=meta["step"], desc="sft")
    step = meta["step"]
    with open(metrics_path, "a") as metrics:
        if step == 0:
            ev = evaluate(model, val, vocab_map, T, p.eval_tokens, p.batch_size, device)
            log(f"step 0: val loss {ev['loss']:.4f}")
            _write(metrics, {"step": 0, "val_loss": ev["loss"], "val_ppl": ev["ppl"], "val_ppl_known": ev["ppl_known"],
                             "elapsed": 0.0, "flops": 0})
        t_last = time.perf_counter()
        while step < p.steps and meta["stopped"] is None:
            lr = lr_at(step, p)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = batch(train, T, p.batch_size, gen, vocab_map)
            with autocast:
                _, loss = model(x.to(device), y.to(device))
            _finite(loss.item(), "the training loss", step + 1, lr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if p.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            optimizer.step()
            if frozen_rows is not None:
                with torch.no_grad():
                    model.transformer.wte.weight[:-1].copy_(frozen_rows)
            step += 1
            now = time.perf_counter()
            meta["elapsed"] += now - t_last
            tps = tokens_per_step / max(now - t_last, 1e-9)
            t_last = now
            record = {"step": step, "loss": loss.item(), "lr": lr, "tokens_per_s": round(tps),
                      "elapsed": round(meta["elapsed"], 3), "flops": flops_per_token * tokens_per_step * step}
            bar.update()
            bar.set_postfix_str(f"loss {record['loss']:.3f} {tps / 1e3:.1f}K tok/s")
            if step % p.eval_every == 0 or step == p.steps:
                ev = evaluate(model, val, vocab_map, T, p.eval_tokens, p.batch_size, device)
                _finite(ev["loss"], "the validation loss", step, lr)
                record.update(val_loss=ev["loss"], val_ppl=ev["ppl"], val_ppl_known=ev["ppl_known"])
                log(f"step {step}: batch loss {record['loss']:.4f}, val loss {ev['loss']:.4f}")  # as nanoGPT prints
                _early_stop(meta, ev, p)
                meta["step"] = step
                _write(metrics, record)
                metrics.flush()
                save_checkpoint(path, model, optimizer, gen, meta)
                t_last = time.perf_counter()
                if stop_at is not None and step >= stop_at:
                    raise KeyboardInterrupt
            else:
                _write(metrics, record)
    bar.close()
    save_model(model, os.path.join(path, RUN_MODEL), vocab_map, {k: v for k, v in raw.items()
                                                                 if k not in model.config.to_dict()})
    final = evaluate(model, val, vocab_map, T, p.eval_tokens, p.batch_size, device)
    _finite(final["loss"], "the final validation loss", step, lr_at(max(step - 1, 0), p))
    rate = throughput(tokens_per_step * step, meta["elapsed"], flops_per_token * tokens_per_step * step, device)
    log(f"sft: {rate['tokens_per_s'] or 0:.0f} tokens/s, {(rate['model_flops_per_s'] or 0) / 1e9:.2f} model GFLOP/s, "
        + (f"MFU {rate['mfu']:.1%}" if rate["mfu"] is not None else f"MFU unknown: {rate['mfu_note']}"))
    log(f"sft: step {step}, validation loss {final['loss']:.4f}, perplexity {final['ppl']:.2f}"
        + (f" (stopped: {meta['stopped']})" if meta["stopped"] else ""))
    return {"params": asdict(p),
            "inputs": {"model": model_artifact.fingerprint, "tokens": tokens.fingerprint},
            "tokenizer": tokens.manifest.get("tokenizer"), "steps": step, "final_val_loss": final["loss"],
            "final_val_ppl": final["ppl"], "final_val_unk_rate": final["unk_rate"],
            "final_val_ppl_known": final["ppl_known"], "val_type_coverage": final["type_coverage"],
            "model_vocab": model.config.vocab_size, "eval_block": final["block"], "eval_tokens": final["tokens"],
            "tie_head": model.config.tie_head, "embed_scale": raw.get("embed_scale"),
            "recipe": raw.get("recipe"), "frozen_embedding_rows": None if not p.freeze_embeddings else
            ("all but <unk>" if frozen_rows is not None else "all"), "train_seconds": round(meta["elapsed"], 3),
            "flops": flops_per_token * tokens_per_step * step, "stopped": meta["stopped"], "device": device,
            "init": raw.get("init"), **rate}


def _early_stop(meta: dict, ev: dict, p: SftParams) -> None:
    if meta["best"] is None or ev["loss"] < meta["best"]:
        meta["best"], meta["bad_evals"] = ev["loss"], 0
    else:
        meta["bad_evals"] += 1
    if p.target_ppl is not None and ev["ppl"] <= p.target_ppl:
        meta["stopped"] = f"reached target perplexity {p.target_ppl}"
    elif p.patience is not None and meta["bad_evals"] >= p.patience:
        meta["stopped"] = f"no improvement for {p.patience} evaluations"


def _truncate_metrics(path: str, step: int) -> None:
    """Drop metric lines after the checkpoint we resume from (they will be recomputed)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8", errors="replace") as f:  # a line cut short by a kill is dropped
        rows = parse_metrics(f.read(), strict=False)
    # from step 0 the step-0 evaluation is written again: keep no line then
    kept = [r for r in rows if step and isinstance(r["step"], int) and r["step"] <= step]
    with open(path, "wb") as f:
        f.write(format_metrics(kept))


def _write(f, record: dict) -> None:
    f.write(json.dumps(record) + "\n")
