"""Stage ``synth``: a synthetic token stream written straight to the ``tokens`` format.

For scale tests and benchmarks at any V up to 262,144 without a real corpus.
Model (all seeded):

* unigram ranks are Zipfian with exponent ``zipf`` (default 1.0), drawn by
  inverse-CDF lookup; token ids are a seeded permutation of ranks, so ids are
  not frequency-ordered (like a real BPE vocabulary);
* local structure: with probability ``local`` (default 0.3) a position copies
  a fixed "successor" of the token drawn for the previous position (a seeded
  random map), which gives lag-1 structure above the i.i.d. background;
* documents have geometric lengths with mean ``doc_tokens`` (default 1000).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import CtstoreError
from .formats.tokens import DEFAULT_SHARD_TOKENS, FORMAT_VERSION, TokensWriter
from .log import log, progress, progress_disabled, stopwatch
from .location import Location
from .workspace import Workspace, build_artifact, fingerprint

__all__ = ["SynthParams", "synthesize_tokens"]

MAX_VOCAB = 262_144
BATCH_TOKENS = 1 << 20


@dataclass(frozen=True)
class SynthParams:
    vocab: int = 131_072
    tokens: int = 10_000_000
    seed: int = 0
    zipf: float = 1.0
    local: float = 0.3
    doc_tokens: int = 1000
    shard_tokens: int = DEFAULT_SHARD_TOKENS

    def __post_init__(self):
        if not 2 <= self.vocab <= MAX_VOCAB:
            raise CtstoreError(f"--vocab must be between 2 and {MAX_VOCAB}, not {self.vocab}")
        if self.tokens < 1:
            raise CtstoreError("--tokens must be positive")
        if not 0 <= self.local < 1 or self.zipf <= 0 or self.doc_tokens < 1:
            raise CtstoreError("synth: need 0 <= local < 1, zipf > 0, doc_tokens >= 1")


def synthesize_tokens(params: SynthParams, workspace: Workspace | None = None, force: bool = False):
    ws = workspace or Workspace()
    fp = fingerprint("tokens", FORMAT_VERSION, {"synthetic": asdict(params)}, {})
    out = ws.artifact_location("tokens", fp)
    artifact, _ = build_artifact(ws, "tokens", fp, lambda path: _synth_into(out, params), force=force)
    return artifact


def _synth_into(out: Location, p: SynthParams) -> dict:
    rng = np.random.default_rng(p.seed)
    V = p.vocab
    cdf = np.cumsum(1.0 / np.arange(1, V + 1) ** p.zipf)
    cdf /= cdf[-1]
    id_of_rank = rng.permutation(V).astype(np.uint32)
    successor = rng.integers(0, V, size=V).astype(np.uint32)
    writer = TokensWriter(out, V, shard_tokens=p.shard_tokens)
    timings: dict = {}
    written = 0
    bar = progress(total=p.tokens, unit="tok", unit_scale=True, desc="synth",
               disable=progress_disabled())
    with stopwatch(timings, "synth_s"):
        while written < p.tokens:
            n = min(BATCH_TOKENS, p.tokens - written)
            ranks = np.searchsorted(cdf, rng.random(n)).clip(max=V - 1)
            drawn = id_of_rank[ranks]
            tokens = drawn.copy()
            copy = rng.random(n) < p.local
            copy[0] = False
            tokens[1:][copy[1:]] = successor[drawn[:-1][copy[1:]]]
            lengths = _document_lengths(rng, n, p.doc_tokens)
            writer.add(tokens, lengths)
            written += n
            bar.update(n)
        files = writer.close()
    bar.close()
    log(f"synth: {files['tokens']} tokens, V={V}, {files['docs']} docs, {len(files['shards'])} shard(s)")
    return {
        **files,
        "params": {"synthetic": asdict(p)},
        "inputs": {},
        "tokenizer": f"synthetic-v{V}",
        "timings": timings,
    }


def _document_lengths(rng, n: int, mean: int) -> np.ndarray:
    """Geometric document lengths summing exactly to n (documents end at batch ends)."""
    lengths = rng.geometric(1.0 / mean, size=max(4, 2 * n // mean + 4)).astype(np.int64)
    ends = np.cumsum(lengths)
    k = int(np.searchsorted(ends, n))
    out = lengths[: k + 1].copy()
    out[-1] -= int(ends[k]) - n if k < len(ends) else 0
    if k >= len(ends):
        out = np.append(lengths, n - int(ends[-1]))
    return out[out > 0]
