"""``ctstore generate``: sample text from a model or a run's model.

The prompt goes through the model's own tokenizer (the tiktoken encoding named
in its config) and compact vocabulary (tokenizer id → model id; ids outside the
kept ``V_model`` tokens become the unknown token). Sampled model ids are mapped
back to tokenizer ids and decoded; the unknown token is shown as ``⟨unk⟩`` so a
reader sees where the compact vocabulary lost a word instead of silent gaps.

Sampling is the usual autoregressive loop over the last ``block_size`` tokens:
logits of the last position divided by ``temperature``, restricted to the
``top_k`` largest, softmax, one draw from a seeded ``torch.Generator``.
``temperature=0`` (or ``top_k=1``) is greedy decoding. The same seed, model and
prompt give the same text on the same machine.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch

from .errors import CtstoreError
from .formats.model import inverse_vocab, load_model, resolve_model_dir
from .model import PhotonicGPT
from .stage import Input, Option, Params, Stage, param
from .units import NON_NEGATIVE, POSITIVE, number_flag

__all__ = ["SampleParams", "encode_prompt", "decode_ids", "sample_ids", "generate_text",
           "UNK_TEXT"]

UNK_TEXT = "⟨unk⟩"


MAX_NEW_TOKENS = 10_000  # one forward pass each: bounds a run to minutes, not days (issue 20)
MAX_SAMPLES = 100


@dataclass(frozen=True)
class SampleParams(Params):
    max_new_tokens: int = param(50, f"tokens to generate (at most {MAX_NEW_TOKENS})",
                                parse=number_flag(int, 1, MAX_NEW_TOKENS, what=f"an integer in [1, {MAX_NEW_TOKENS}]"))
    temperature: float = param(0.8, "0 = greedy", parse=number_flag(float, 0, what="a finite number >= 0"))
    top_k: int | None = param(40, "sample among the k most likely tokens", parse=POSITIVE)
    seed: int = param(0, "random seed of the first sample", parse=NON_NEGATIVE)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def encode_prompt(enc, text: str, vocab_map: np.ndarray | None) -> list[int]:
    """Model ids of ``text`` (tokens outside a compact vocabulary become the unknown id)."""
    ids = np.asarray(enc.encode_ordinary(text), dtype=np.int64)
    if vocab_map is not None:
        ids = vocab_map[ids]
    return ids.tolist()


def decode_ids(enc, ids: list[int], vocab_map: np.ndarray | None, vocab_size: int) -> str:
    """Text of model ids; the compact vocabulary's unknown token is rendered as ``⟨unk⟩``."""
    if vocab_map is None:
        return enc.decode([int(i) for i in ids])
    inverse = inverse_vocab(vocab_map, vocab_size)
    parts, run = [], []
    for i in ids:
        t = int(inverse[int(i)])
        if t < 0:
            parts += [enc.decode(run), UNK_TEXT]
            run = []
        else:
            run.append(t)
    parts.append(enc.decode(run))
    return "".join(parts)


SINGLE_THREAD_PARAMS = 20_000_000  # below this, a CPU forward pass of one token is latency-bound


@contextmanager
def _threads_for(model: PhotonicGPT, device: torch.device):
    """One intra-op thread for small models on CPU, restored afterwards.

    Sampling runs one short forward pass per token; for the tiny and small configs
    the work per pass is far below what extra threads can share, and they only add
    synchronisation. On a busy 2-core machine the quickstart report's samples took
    155 s with torch's default 2 threads and 6.6 s with one.
    """
    if device.type != "cpu" or model.num_params() >= SINGLE_THREAD_PARAMS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sample_ids(model: PhotonicGPT, prompt_ids: list[int], params: SampleParams) -> list[int]:
    """Append ``params.max_new_tokens`` sampled model ids to ``prompt_ids``; returns the new ids."""
    if not prompt_ids:
        raise CtstoreError("--prompt: empty after tokenization; give at least one character")
    device = next(model.parameters()).device
    with _threads_for(model, device), torch.no_grad():
        return _sample_loop(model, prompt_ids, params, device)


def _sample_loop(model: PhotonicGPT, prompt_ids: list[int], params: SampleParams, device) -> list[int]:
    model.eval()
    gen = torch.Generator(device="cpu").manual_seed(params.seed)
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    block = model.config.block_size
    new: list[int] = []
    for _ in range(params.max_new_tokens):
        logits = model(ids[:, -block:])[0][0, -1].float().cpu()
        if params.greedy:
            nxt = int(torch.argmax(logits))
        else:
            logits = logits / params.temperature
            if params.top_k is not None and params.top_k < logits.numel():
                kth = torch.topk(logits, params.top_k).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen))
        new.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]], device=device)], dim=1)
    return new


def load_generator(model_directory, encoding: str | None = None):
    """``(model, vocab_map, enc)`` for a model directory (a ctstore model, or a ``ctstore export`` output);
    ``encoding`` overrides the config's tokenizer."""
    from .encoding import load_encoding
    from .formats.hf import is_exported, load_exported

    exported = isinstance(model_directory, str) and is_exported(model_directory)
    model, vocab_map, raw = load_exported(model_directory) if exported else load_model(model_directory)
    name = encoding or raw.get("tokenizer")
    if not name:
        raise CtstoreError(f"{model_directory}: the model names no tokenizer (pass --encoding)")
    enc, _ = load_encoding(name)
    tokenizer_vocab = raw.get("tokenizer_vocab") or (len(vocab_map) if vocab_map is not None else None)
    if tokenizer_vocab is not None and enc.n_vocab != tokenizer_vocab:
        raise CtstoreError(f"encoding {name!r} has {enc.n_vocab} tokens but the model was built for "
                           f"{tokenizer_vocab}")
    return model, vocab_map, enc


def generate_text(model: PhotonicGPT, vocab_map, enc, prompt: str, params: SampleParams) -> dict:
    """One sample: ``{"prompt", "completion", "text", "ids"}`` (``ids`` are the new model ids)."""
    prompt_ids = encode_prompt(enc, prompt, vocab_map)
    new = sample_ids(model, prompt_ids, params)
    completion = decode_ids(enc, new, vocab_map, model.config.vocab_size)
    return {"prompt": prompt, "completion": completion, "text": prompt + completion, "ids": new}


def _generate_stage(ws, inputs, params: SampleParams, opts):
    from .formats.hf import is_exported

    ref = inputs["model"]
    directory = ref if is_exported(ref) else resolve_model_dir(ref, ws)
    model, vocab_map, enc = load_generator(directory, opts["encoding"])
    samples = []
    for i in range(opts["num_samples"]):
        sample = replace(params, seed=params.seed + i)
        samples.append({**generate_text(model, vocab_map, enc, opts["prompt"], sample), "seed": sample.seed})
    if opts["json"]:
        print(json.dumps({"model": inputs["model"], "samples": samples}, ensure_ascii=False))
    else:
        print("\n---\n".join(s["text"] for s in samples))
        sys.stdout.flush()
    return None


STAGE = Stage(
    name="generate", kind=None, params=SampleParams, compute=False, run=_generate_stage,
    help="sample text from a model or run",
    inputs=(Input("model", None, "model or run artifact fingerprint (or a model directory, or a directory "
                                 "written by ctstore export)"),),
    options=(Option("--prompt", "text to continue", required=True),
             Option("--num-samples", f"samples with seeds seed, seed+1, ... (at most {MAX_SAMPLES})", default=1,
                    parse=number_flag(int, 1, MAX_SAMPLES, what=f"an integer in [1, {MAX_SAMPLES}]"), short="-n"),
             Option("--encoding", "tiktoken encoding (default: the model's)")),
)
