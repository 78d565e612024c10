"""Stage ``tokenize``: its parameters, its entry point and its command line.

:func:`tokenize_corpus` expands and hashes the inputs (:mod:`.inputs`), checks
the memory budget before any work, and encodes the documents of every file
(:mod:`.readers`, :mod:`.encode`) into a ``tokens`` artifact.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from ..encoding import DEFAULT_ENCODING, load_encoding
from ..errors import CtstoreError
from ..formats.tokens import DEFAULT_SHARD_TOKENS, FORMAT_VERSION
from ..stage import Input, Option, Params, Stage, param
from ..units import COUNT, POSITIVE, format_bytes, parse_memory
from ..workspace import Workspace, build_artifact
from .decode import READ_BLOCK
from .encode import TEXT_BATCH_BYTES, _tokenize_into
from .inputs import _file_identity, expand_inputs
from .readers import MAX_PIECE_CHARS

BYTES_PER_OPEN_TOKEN = 40  # peak bytes per token of a document being written (pieces, concatenation, Arrow's writer)
DEFAULT_MAX_DOC_TOKENS = 8 << 20


@dataclass(frozen=True)
class TokenizeParams(Params):
    encoding: str = param(DEFAULT_ENCODING, "tiktoken encoding name or .tiktoken file")
    split: str = param("paragraph", "documents in text files (default: blank-line paragraphs)",
                       choices=("paragraph", "line", "file"))
    field: str = param("text", "JSONL field holding the text")
    column: str = param("text", "Parquet column holding the text")
    strict: bool = param(False, "invalid UTF-8 is an error instead of U+FFFD")
    shard_tokens: int = param(DEFAULT_SHARD_TOKENS, "tokens per Parquet shard (default 32M)", parse=COUNT)
    # bounds the memory of writing one document (about BYTES_PER_OPEN_TOKEN bytes per token)
    max_doc_tokens: int = param(DEFAULT_MAX_DOC_TOKENS, "a longer document is stored as consecutive documents, "
                                "cut where tokens do not change (default 8388608 = 8Mi)", parse=COUNT)


def tokenize_corpus(inputs: list[str], workspace: Workspace | None = None, *, params: TokenizeParams | None = None,
                    threads: int | None = None, force: bool = False, memory: int | str | None = None):
    """Tokenize a corpus into a ``tokens`` artifact (reused when it already exists).

    Parameters
    ----------
    inputs : files, directories and glob patterns.
    params : document splitting, fields, encoding, strictness, shard size.
    threads : encoding threads (default: all cores).
    memory : budget (e.g. ``"1GB"``): refused before any work if a document of
        ``params.max_doc_tokens`` could not be written within it (see
        :func:`_check_memory`). Default: not checked.
    """
    ws = workspace or Workspace()
    params = params or TokenizeParams()
    budget = parse_memory(memory) if memory is not None else None
    files = expand_inputs(inputs)
    enc, identity = load_encoding(params.encoding)
    opened: dict = {}
    sources = [_file_identity(p, opened) for p in files]
    param_dict = asdict(params) | {"encoding": identity}
    fp = STAGE.fingerprint(param_dict, {}, sources)  # every field, the encoding by its identity
    total_bytes = sum(s["bytes"] for s in sources)

    threads = threads or os.cpu_count() or 1
    _check_memory(budget, params, enc.n_vocab, threads)  # before any work: a refusal leaves nothing behind

    out = ws.artifact_location("tokens", fp)

    def build(path: str) -> dict:
        return _tokenize_into(out, files, params, enc, identity, param_dict, sources, total_bytes, threads,
                              opened)

    artifact, _ = build_artifact(ws, "tokens", fp, build, force=force)
    return artifact


def _check_memory(budget: int | None, params: TokenizeParams, n_vocab: int, threads: int) -> None:
    """Refuse, before any work, a budget that cannot hold a document of ``max_doc_tokens`` being written.

    Counted: what the process holds now (encoding, libraries), the reader's
    buffers, the batches in flight, the unigram counts, and
    ``BYTES_PER_OPEN_TOKEN`` per token of the longest stored document.
    """
    if budget is None:
        return
    import psutil

    fixed = (psutil.Process().memory_info().rss + 4 * READ_BLOCK + 8 * MAX_PIECE_CHARS
             + (2 * threads + 2) * 32 * TEXT_BATCH_BYTES + 16 * n_vocab)
    need = fixed + params.max_doc_tokens * BYTES_PER_OPEN_TOKEN
    if need > budget:
        fit = max(0, budget - fixed) // BYTES_PER_OPEN_TOKEN
        raise CtstoreError(f"--memory {format_bytes(budget)} is too small for tokenize with --max-doc-tokens "
                           f"{params.max_doc_tokens}: needs about {format_bytes(need)} "
                           f"({format_bytes(fixed)} before any document); raise --memory or use "
                           f"--max-doc-tokens {fit} or less")


STAGE = Stage(
    name="tokenize", kind="tokens", params=TokenizeParams, code_version=1, format_version=FORMAT_VERSION,
    help="text/JSONL/Parquet corpus -> tokens artifact",
    inputs=(Input("inputs", None, "files, directories or glob patterns", nargs="+"),),
    options=(Option("--threads", "encoding threads (default: all cores)", parse=POSITIVE),),
    run=lambda ws, inputs, params, opts: tokenize_corpus(inputs["inputs"], ws, params=params, threads=opts["threads"],
                                                         force=opts["force"], memory=opts["memory"]),
)
