"""Stage ``sft``: model + tokens → ``run`` artifact (docs/design.md §5; Paper 113 §7).

* Data: the tokens artifact is split by document (a fixed hash of ``doc_id``
  puts ``val_fraction`` of documents in validation) into two flat uint32
  memory-mapped files, cached per (tokens, split); windows of ``block_size+1``
  tokens are sampled with a seeded ``torch.Generator``. No Python token lists.
* Optimisation: AdamW (decay on matrices only), linear warmup then cosine decay
  to 10% of the peak rate, gradient clipping, optional frozen token embedding
  (and so the tied head; with a compact vocabulary every row but ``<unk>``,
  which has no statistics of its own and trains in every arm alike), bf16
  autocast on CUDA.
* Evaluation every ``eval_every`` steps, by :func:`evaluate`, the one definition
  of validation perplexity that ``ctstore eval`` and the reports also use:
  consecutive non-overlapping windows of ``block_size`` predicted tokens over
  the whole validation split (or over its first ``eval_tokens`` tokens, a
  stated sample), so every validation token after the first is predicted
  exactly once; the loss is the mean over those tokens. Beside it: the share of
  predicted tokens that are ``<unk>`` under a compact vocabulary, the loss over
  the other tokens, and the share of distinct validation ids the vocabulary
  holds. Loss and perplexity go into ``metrics.jsonl``; early stop when perplexity
  reaches ``target_ppl`` or has not improved for ``patience`` evaluations.
* Checkpoints after every evaluation: one safetensors file holding weights,
  AdamW moments, RNG states and (in its metadata) step and schedule, written
  to a temporary name then renamed once, so a kill never tears it.
  An interrupted run resumes from the last checkpoint and, on CPU, continues
  bit-identically.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .errors import CtstoreError
from .log import log, progress
from .model import PhotonicGPT, load_model, save_model
from .split import in_validation
from .workspace import Workspace, build_artifact, fingerprint

__all__ = ["SftParams", "train_model", "evaluate", "validation_windows", "TokenSplit"]

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


# ---------------------------------------------------------------------------------------
# data


class TokenSplit:
    """Flat memory-mapped train/validation token arrays of a tokens artifact."""

    def __init__(self, tokens, fraction: float, cache_dir: str, lock=None):
        """The cache is built and opened under ``lock`` (default: the workspace's scratch lock of
        ``<workspace>/tmp/<name>``), so ``ctstore gc`` and a second job building it leave it alone."""
        self.tokens = tokens
        os.makedirs(cache_dir, exist_ok=True)
        self.paths = {s: os.path.join(cache_dir, f"{s}.u32") for s in ("train", "val")}
        with lock or _scratch_lock(cache_dir):
            os.makedirs(cache_dir, exist_ok=True)
            if not all(os.path.exists(p) for p in self.paths.values()):
                self._build(fraction)
            self.arrays = {s: np.memmap(p, dtype=np.uint32, mode="r") for s, p in self.paths.items()}
        for split, arr in self.arrays.items():
            if arr.size < 2:
                raise CtstoreError(f"{tokens}: the {split} split has {arr.size} tokens; need more documents")

    def _build(self, fraction: float) -> None:
        import fsspec
        import pyarrow.parquet as pq

        from .errors import write_error

        tmp = {s: p + ".partial" for s, p in self.paths.items()}
        files = {s: open(p, "wb") for s, p in tmp.items()}
        try:
            for shard in self.tokens.manifest["shards"]:
                with fsspec.open(f"{self.tokens.url}/{shard['name']}", "rb") as f:
                    table = pq.read_table(f)
                doc_ids = table.column("doc_id").to_numpy()
                col = table.column("tokens").combine_chunks()
                offsets = col.offsets.to_numpy()
                values = col.values.to_numpy()
                val = in_validation(doc_ids, fraction)
                per_token = np.repeat(val, np.diff(offsets))
                values = values[offsets[0]:offsets[-1]]
                files["val"].write(values[per_token].tobytes())
                files["train"].write(values[~per_token].tobytes())
            for f in files.values():
                f.close()
        except OSError as exc:
            for s, p in tmp.items():
                _close_quietly(files[s])
                _remove_quietly(p)
            if exc.filename is None:  # a write into the cache, not a read of the tokens artifact
                cache_dir = os.path.dirname(tmp["train"])
                try:
                    os.rmdir(cache_dir)
                except OSError:
                    pass
                raise write_error(cache_dir, "SFT token cache", exc) from None
            raise
        finally:
            for f in files.values():
                _close_quietly(f)
        for s in tmp:
            os.replace(tmp[s], self.paths[s])


def _scratch_lock(cache_dir: str):
    """The workspace's lock on a scratch directory ``<workspace>/tmp/<name>`` (no lock elsewhere)."""
    from contextlib import nullcontext

    parent = os.path.dirname(os.path.abspath(cache_dir))
    if os.path.basename(parent) != "tmp":
        return nullcontext()
    return Workspace(os.path.dirname(parent)).scratch_lock(os.path.basename(os.path.abspath(cache_dir)))


def _batch(data: np.ndarray, T: int, B: int, gen: torch.Generator, vocab_map):
    ix = torch.randint(len(data) - T - 1, (B,), generator=gen).numpy()
    chunk = np.stack([np.asarray(data[i: i + T + 1], dtype=np.int64) for i in ix])
    if vocab_map is not None:
        chunk = vocab_map[chunk]
    chunk = torch.from_numpy(chunk)
    return chunk[:, :-1], chunk[:, 1:]


EVAL_BATCH_TOKENS = 8192  # evaluation batches hold at least this many tokens


def validation_windows(n_tokens: int, T: int, max_tokens: int | None = None) -> list[tuple[int, int]]:
    """``(start, n)`` of the evaluation windows: inputs ``data[start:start+n]``, targets shifted by one.

    Consecutive and non-overlapping, ``n = T`` except possibly the last, covering
    tokens 1..N-1 of the first ``N = min(n_tokens, max_tokens)`` tokens exactly once.
    """
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
    out = {"loss": mean, "ppl": float(math.exp(min(mean, 50))), "tokens": n_tok, "block": T}
    if unk is not None:
        ids = np.unique(np.asarray(data[1: windows[-1][0] + windows[-1][1] + 1]))
        known = known_total / max(1, n_tok - n_unk)
        out.update(unk_rate=n_unk / n_tok, loss_known=known, ppl_known=float(math.exp(min(known, 50))),
                   type_coverage=float(np.mean(vocab_map[ids] != unk)))
    else:
        out.update(unk_rate=0.0, loss_known=mean, ppl_known=out["ppl"], type_coverage=1.0)
    return out


# ---------------------------------------------------------------------------------------
# checkpoints


CHECKPOINT = "checkpoint.safetensors"
LEGACY_STATE = "checkpoint.json"  # ctstore <= 0.x kept step and schedule here, renamed separately
STATE_KEY = "ctstore.sft_state"


def _save_checkpoint(path: str, model, optimizer, gen: torch.Generator, state: dict) -> None:
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
    tmp = final + ".partial"
    try:
        save_file(tensors, tmp, metadata={STATE_KEY: meta, "ctstore.step": str(state["step"])})
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except (OSError, SafetensorError) as exc:  # a full disk is the usual cause
        _remove_quietly(tmp)
        from .errors import write_error

        raise write_error(tmp, "SFT checkpoint", exc) from None
    os.replace(tmp, final)
    _remove_quietly(os.path.join(path, LEGACY_STATE))


def _close_quietly(f) -> None:
    try:
        f.close()
    except OSError:  # flushing onto a full disk: the file is being discarded anyway
        pass


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _optimizer_steps(tensors: dict) -> set[int]:
    """The step counts AdamW recorded per parameter (one value in a consistent checkpoint)."""
    return {int(v.item()) for k, v in tensors.items() if k.startswith("opt.") and k.endswith(".step")}


def _load_checkpoint(path: str, model, optimizer, gen: torch.Generator) -> dict | None:
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


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------
# training


def _lr_at(step: int, p: SftParams) -> float:
    if step < p.warmup:
        return p.lr * (step + 1) / p.warmup
    progress = (step - p.warmup) / max(1, p.steps - p.warmup)
    return p.lr * (p.min_lr_ratio + (1 - p.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _optimizer(model: PhotonicGPT, p: SftParams) -> torch.optim.AdamW:
    params = [q for q in model.parameters() if q.requires_grad]
    decay = [q for q in params if q.dim() >= 2]
    no_decay = [q for q in params if q.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": p.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=p.lr, betas=(0.9, 0.95))


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
        return _train_into(ws, path, model_artifact, tokens, params, device, _stop_at)

    return build_artifact(ws, "run", fp, build, force=force, keep_partial=True)[0]


def _check_tokenizer(model_artifact, tokens) -> None:
    a, b = model_artifact.manifest.get("tokenizer"), tokens.manifest.get("tokenizer")
    if a != b:
        raise CtstoreError(f"{tokens}: tokenized with {b!r} but model {model_artifact.fingerprint} "
                           f"was built for {a!r}")


def _train_into(ws, path, model_artifact, tokens, p: SftParams, device, stop_at) -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, vocab_map, raw = load_model(model_artifact.path, device)
    T = min(p.block_size or model.config.block_size, model.config.block_size)
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
    optimizer = _optimizer(model, p)
    gen = torch.Generator().manual_seed(p.seed)
    torch.manual_seed(p.seed)
    meta = _load_checkpoint(path, model, optimizer, gen) or {"step": 0, "best": None, "bad_evals": 0,
                                                             "elapsed": 0.0, "stopped": None}
    if meta["step"]:
        log(f"sft: resuming from step {meta['step']}")
    metrics_path = os.path.join(path, "metrics.jsonl")
    _truncate_metrics(metrics_path, meta["step"])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else _null()
    tokens_per_step = p.batch_size * T
    flops_per_token = model.flops_per_token()
    log(f"sft: {model.num_params() / 1e6:.2f}M params, {p.steps} steps x {tokens_per_step} tokens, "
        f"train {len(train)} / val {len(val)} tokens, device {device}")
    bar = progress(total=p.steps, initial=meta["step"], desc="sft")
    step = meta["step"]
    with open(metrics_path, "a") as metrics:
        if step == 0:
            ev = evaluate(model, val, vocab_map, T, p.eval_tokens, p.batch_size, device)
            _write(metrics, {"step": 0, "val_loss": ev["loss"], "val_ppl": ev["ppl"], "val_ppl_known": ev["ppl_known"],
                             "elapsed": 0.0, "flops": 0})
        t_last = time.perf_counter()
        while step < p.steps and meta["stopped"] is None:
            lr = _lr_at(step, p)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = _batch(train, T, p.batch_size, gen, vocab_map)
            with autocast:
                _, loss = model(x.to(device), y.to(device))
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
                record.update(val_loss=ev["loss"], val_ppl=ev["ppl"], val_ppl_known=ev["ppl_known"])
                _early_stop(meta, ev, p)
                meta["step"] = step
                _write(metrics, record)
                metrics.flush()
                _save_checkpoint(path, model, optimizer, gen, meta)
                t_last = time.perf_counter()
                if stop_at is not None and step >= stop_at:
                    raise KeyboardInterrupt
            else:
                _write(metrics, record)
    bar.close()
    save_model(model, os.path.join(path, "model"), vocab_map, {k: v for k, v in raw.items()
                                                                if k not in model.config.to_dict()})
    final = evaluate(model, val, vocab_map, T, p.eval_tokens, p.batch_size, device)
    log(f"sft: step {step}, validation loss {final['loss']:.4f}, perplexity {final['ppl']:.2f}"
        + (f" (stopped: {meta['stopped']})" if meta["stopped"] else ""))
    return {"format_version": FORMAT_VERSION, "params": asdict(p),
            "inputs": {"model": model_artifact.fingerprint, "tokens": tokens.fingerprint},
            "tokenizer": tokens.manifest.get("tokenizer"), "steps": step, "final_val_loss": final["loss"],
            "final_val_ppl": final["ppl"], "final_val_unk_rate": final["unk_rate"],
            "final_val_ppl_known": final["ppl_known"], "val_type_coverage": final["type_coverage"],
            "model_vocab": model.config.vocab_size, "eval_block": final["block"], "eval_tokens": final["tokens"],
            "tie_head": model.config.tie_head, "embed_scale": raw.get("embed_scale"),
            "recipe": raw.get("recipe"), "frozen_embedding_rows": None if not p.freeze_embeddings else
            ("all but <unk>" if frozen_rows is not None else "all"), "train_seconds": round(meta["elapsed"], 3),
            "flops": flops_per_token * tokens_per_step * step, "stopped": meta["stopped"], "device": device,
            "init": raw.get("init")}


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
    lines = []
    with open(path) as f:  # from step 0 the step-0 evaluation is written again: keep no line then
        for ln in f:
            try:
                keep = step and json.loads(ln)["step"] <= step
            except (ValueError, KeyError, TypeError):  # a line cut short by a kill
                keep = False
            if keep:
                lines.append(ln if ln.endswith("\n") else ln + "\n")
    with open(path, "w") as f:
        f.writelines(lines)


def _write(f, record: dict) -> None:
    f.write(json.dumps(record) + "\n")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def model_dir(artifact) -> str:
    """Directory holding model.safetensors for a model or run artifact."""
    if artifact.kind == "model":
        return artifact.path
    if artifact.kind == "run":
        return os.path.join(artifact.path, "model")
    raise CtstoreError(f"{artifact}: is a {artifact.kind} artifact, expected a model or a run")


# ---------------------------------------------------------------------------------------
# CLI


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
