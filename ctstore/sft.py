"""Stage ``sft``: model + tokens → ``run`` artifact (DESIGN.md section 4; Paper 113 §7).

* Data: the tokens artifact is split by document (a fixed hash of ``doc_id``
  puts ``val_fraction`` of documents in validation) into two flat uint32
  memory-mapped files, cached per (tokens, split); windows of ``block_size+1``
  tokens are sampled with a seeded ``torch.Generator``. No Python token lists.
* Optimisation: AdamW (decay on matrices only), linear warmup then cosine decay
  to 10% of the peak rate, gradient clipping, optional frozen token embedding
  (and so the tied head), bf16 autocast on CUDA.
* Evaluation every ``eval_every`` steps on a fixed set of validation windows:
  loss and perplexity into ``metrics.jsonl``; early stop when perplexity
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

from ._util import progress, CtstoreError, log
from .model import PhotonicGPT, load_model, save_model
from .workspace import Workspace, build_artifact, fingerprint

__all__ = ["SftParams", "train_model", "evaluate", "TokenSplit"]

FORMAT_VERSION = 1


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
    eval_batches: int = 8
    val_fraction: float = 0.1
    target_ppl: float | None = None
    patience: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise CtstoreError("sft: steps, batch size and eval interval must be positive")
        if not 0 < self.val_fraction < 1:
            raise CtstoreError("sft: --val-fraction must be between 0 and 1")


# ---------------------------------------------------------------------------------------
# data


def _in_validation(doc_ids: np.ndarray, fraction: float) -> np.ndarray:
    h = (doc_ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    return (h % np.uint64(10_000)) < np.uint64(int(fraction * 10_000))


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

        from ._util import write_error

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
                val = _in_validation(doc_ids, fraction)
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


def _eval_windows(data: np.ndarray, T: int, n: int) -> list[int]:
    span = len(data) - T - 1
    return [int(x) for x in np.linspace(0, max(0, span - 1), num=n)]


@torch.no_grad()
def evaluate(model: PhotonicGPT, data: np.ndarray, vocab_map, T: int, batches: int = 8,
             batch_size: int = 16, device: str = "cpu") -> dict:
    """Mean cross-entropy and perplexity over fixed, evenly spaced windows."""
    model.eval()
    T = min(T, len(data) - 2)
    starts = _eval_windows(data, T, batches * batch_size)
    losses = []
    for i in range(0, len(starts), batch_size):
        chunk = np.stack([np.asarray(data[s: s + T + 1], dtype=np.int64) for s in starts[i: i + batch_size]])
        if vocab_map is not None:
            chunk = vocab_map[chunk]
        chunk = torch.from_numpy(chunk).to(device)
        _, loss = model(chunk[:, :-1], chunk[:, 1:])
        losses.append(float(loss))
    model.train()
    mean = float(np.mean(losses))
    return {"loss": mean, "ppl": float(math.exp(min(mean, 50)))}


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
        from ._util import write_error

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
    if p.freeze_embeddings:
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
            ev = evaluate(model, val, vocab_map, T, p.eval_batches, p.batch_size, device)
            _write(metrics, {"step": 0, "val_loss": ev["loss"], "val_ppl": ev["ppl"], "elapsed": 0.0, "flops": 0})
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
                ev = evaluate(model, val, vocab_map, T, p.eval_batches, p.batch_size, device)
                record.update(val_loss=ev["loss"], val_ppl=ev["ppl"])
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
    final = evaluate(model, val, vocab_map, T, p.eval_batches, p.batch_size, device)
    log(f"sft: step {step}, validation loss {final['loss']:.4f}, perplexity {final['ppl']:.2f}"
        + (f" (stopped: {meta['stopped']})" if meta["stopped"] else ""))
    return {"format_version": FORMAT_VERSION, "params": asdict(p),
            "inputs": {"model": model_artifact.fingerprint, "tokens": tokens.fingerprint},
            "tokenizer": tokens.manifest.get("tokenizer"), "steps": step, "final_val_loss": final["loss"],
            "final_val_ppl": final["ppl"], "train_seconds": round(meta["elapsed"], 3),
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


def add_parser(sub, common) -> None:
    s = sub.add_parser("sft", help="fine-tune a model on tokens -> run artifact")
    s.add_argument("model", help="model artifact fingerprint")
    s.add_argument("--tokens", required=True, help="tokens artifact fingerprint")
    for name, default in (("steps", 200), ("batch-size", 16), ("warmup", 20), ("eval-every", 50),
                          ("eval-batches", 8), ("seed", 0)):
        s.add_argument(f"--{name}", type=int, default=default)
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
    e.add_argument("--val-fraction", type=float, default=0.1)
    e.add_argument("--batches", type=int, default=16)
    common(e, compute=False)


def run_cli(args, ws):
    tokens = ws.get(args.tokens, kind="tokens")
    if args.command == "eval":
        art = ws.get(args.model)
        model, vocab_map, raw = load_model(model_dir(art))
        if raw.get("tokenizer") != tokens.manifest.get("tokenizer"):
            raise CtstoreError(f"{tokens}: tokenized with {tokens.manifest.get('tokenizer')!r} but the model "
                               f"expects {raw.get('tokenizer')!r}")
        split = TokenSplit(tokens, args.val_fraction,
                           ws.scratch_dir("tokens", f"{tokens.fingerprint}-val{args.val_fraction}"))
        result = evaluate(model, split.arrays[args.split], vocab_map, model.config.block_size, args.batches)
        print(json.dumps({"model": art.fingerprint, "tokens": tokens.fingerprint, "split": args.split, **result}))
        return None
    model_art = ws.get(args.model, kind="model")
    params = SftParams(steps=args.steps, batch_size=args.batch_size, block_size=args.block_size, lr=args.lr,
                       warmup=args.warmup, freeze_embeddings=args.freeze_embeddings, eval_every=args.eval_every,
                       eval_batches=args.eval_batches, val_fraction=args.val_fraction, target_ppl=args.target_ppl,
                       patience=args.patience, seed=args.seed)
    return train_model(model_art, tokens, ws, params=params, force=args.force, device=args.device)
