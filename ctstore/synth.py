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

from .formats.tokens import DEFAULT_SHARD_TOKENS, FORMAT_VERSION, TokensWriter
from .log import log, progress, progress_disabled, stopwatch
from .stage import Params, Stage, param
from .units import COUNT, NON_NEGATIVE, number_flag, parse_count, text_flag
from .workspace import Workspace, build_artifact
from .location import Location

__all__ = ["SynthParams", "synthesize_tokens"]

MAX_VOCAB = 262_144
BATCH_TOKENS = 1 << 20


@dataclass(frozen=True)
class SynthParams(Params):
    vocab: int = param(131_072, f"vocabulary size V (<= {MAX_VOCAB})",
                       parse=text_flag(parse_count, f"a vocabulary size from 2 to {MAX_VOCAB}", minimum=2,
                                       maximum=MAX_VOCAB, parsed=True))
    tokens: int = param(10_000_000, "number of tokens, e.g. 200M", parse=COUNT)
    seed: int = param(0, "random seed", parse=NON_NEGATIVE)
    zipf: float = param(1.0, "Zipf exponent of unigram ranks", parse=number_flag(float, 0, low_open=True,
                                                                              what="a finite number > 0"))
    local: float = param(0.3, "probability of a successor copy (lag-1 structure)",
                         parse=number_flag(float, 0, 1, high_open=True, what="a probability in [0, 1)"))
    doc_tokens: int = param(1000, "mean document length", parse=COUNT)
    shard_tokens: int = param(DEFAULT_SHARD_TOKENS, "tokens per Parquet shard", parse=COUNT)


def synthesize_tokens(params: SynthParams, workspace: Workspace | None = None, force: bool = False):
    ws = workspace or Workspace()
    fp = STAGE.fingerprint(params, {})
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


STAGE = Stage(
    name="synth", kind="tokens", params=SynthParams, code_version=1, format_version=FORMAT_VERSION,
    help="synthetic Zipfian token stream -> tokens artifact",
    run=lambda ws, inputs, params, opts: synthesize_tokens(params, ws, force=opts["force"]),
)
