"""Stage ``tokenize``: text / JSONL / Parquet corpora → ``tokens`` artifact.

Inputs are files, directories (searched recursively) and glob patterns, with
optional ``.gz .bz2 .xz .zst`` compression. Documents:

* ``.txt`` (and any other suffix): ``split="paragraph"`` (default; blank-line
  separated), ``"line"`` or ``"file"``;
* ``.jsonl``: one JSON object per line, the string in ``field`` (default ``text``);
* ``.parquet``: the string column ``column`` (default ``text``);
* a Hugging Face datasets directory (``save_to_disk`` or Parquet): see :mod:`ctstore.hfdata`.

Invalid UTF-8 is decoded with U+FFFD and the replaced bytes are counted in the
manifest; ``strict=True`` makes it an error. Special-token text such as
``<|endoftext|>`` is encoded as ordinary text (``encode_ordinary``).

Speed: tiktoken's Rust core releases the GIL, so ``threads`` worker threads each
encode a batch of about 4 MB of documents with a plain loop over
``encode_ordinary``. That avoids the per-document future that
``encode_ordinary_batch`` creates, which dominates for line-sized documents.
"""

from __future__ import annotations

import bz2
import codecs
import glob
import gzip
import hashlib
import itertools
import json
import lzma
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from ._util import progress, CtstoreError, log, save_npy, stopwatch
from .encoding import DEFAULT_ENCODING, load_encoding
from .hfdata import hf_dataset_files, read_arrow
from .tokens import DEFAULT_SHARD_TOKENS, FORMAT_VERSION, ShardWriter
from .workspace import Workspace, build_artifact, fingerprint

__all__ = ["TokenizeParams", "tokenize_corpus", "expand_inputs"]

COMPRESSION = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
TEXT_BATCH_BYTES = 256 << 10


@dataclass(frozen=True)
class TokenizeParams:
    encoding: str = DEFAULT_ENCODING
    split: str = "paragraph"  # paragraph | line | file (for text files)
    field: str = "text"  # JSONL field
    column: str = "text"  # Parquet column
    strict: bool = False
    shard_tokens: int = DEFAULT_SHARD_TOKENS

    def __post_init__(self):
        if self.split not in ("paragraph", "line", "file"):
            raise CtstoreError(f"--split must be paragraph, line or file, not {self.split!r}")
        if self.shard_tokens <= 0:
            raise CtstoreError("--shard-tokens must be positive")


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files named by paths, directories and glob patterns, sorted, without duplicates."""
    files: list[str] = []
    for item in inputs:
        if os.path.isdir(item) and (hf_files := hf_dataset_files(item)) is not None:
            files.extend(hf_files)  # a Hugging Face datasets directory (ctstore.hfdata)
        elif os.path.isdir(item):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(item)
                for name in names
                if not name.startswith(".")
            )
            if not found:
                raise CtstoreError(f"{item}: directory contains no files")
            files.extend(found)
        elif any(ch in item for ch in "*?["):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise CtstoreError(f"{item}: pattern matches no files")
            files.extend(found)
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise CtstoreError(f"{item}: no such file or directory")
    return list(dict.fromkeys(files))


def _open_binary(path: str):
    for suffix, opener in COMPRESSION.items():
        if path.endswith(suffix):
            return opener(path, "rb")
    if path.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")


def _format_of(path: str) -> str:
    base = path
    for suffix in (*COMPRESSION, ".zst"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    if base.endswith(".jsonl") or base.endswith(".ndjson"):
        return "jsonl"
    if base.endswith(".parquet"):
        return "parquet"
    if base.endswith(".arrow"):
        return "arrow"
    return "text"


def _file_identity(path: str) -> dict:
    """Content hash of a source file: the fingerprint never depends on paths or mtimes."""
    h = hashlib.blake2b(digest_size=16)
    size = 0
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
            size += len(block)
    return {"blake2b": h.hexdigest(), "bytes": size}


class _Decoder:
    """Incremental UTF-8 decoding that counts replaced bytes (or fails, if strict)."""

    _local = threading.local()

    def __init__(self, path: str, strict: bool):
        self.path, self.strict, self.replaced = path, strict, 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="strict" if strict else "ctstore-count")
        self.offset = 0

    def decode(self, data: bytes, final: bool = False) -> str:
        _Decoder._local.current = self
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise CtstoreError(
                f"{self.path}: invalid UTF-8 at byte {self.offset + exc.start} (--strict is set)"
            ) from None
        self.offset += len(data)
        return text


def _count_replacement(exc: UnicodeDecodeError):
    _Decoder._local.current.replaced += exc.end - exc.start
    return "\ufffd", exc.end


codecs.register_error("ctstore-count", _count_replacement)


def _check_not_binary(path: str, head: bytes) -> None:
    if b"\x00" in head[:8192]:
        raise CtstoreError(f"{path}: looks like a binary file (NUL bytes), not text")


def _read_text(path: str, split: str, decoder: _Decoder):
    with _open_binary(path) as f:
        try:
            head = f.read(1 << 16)
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise CtstoreError(f"{path}: cannot decompress ({exc})") from None
        _check_not_binary(path, head)
        if split == "file":
            rest = f.read()
            yield decoder.decode(head + rest, final=True)
            return
        carry = ""
        data = head
        while True:
            text = carry + decoder.decode(data, final=not data)
            if not data:
                lines, carry = text.split("\n"), ""
            else:
                lines = text.split("\n")
                carry = lines.pop()
            yield from lines
            if not data:
                return
            data = f.read(8 << 20)


def _read_paragraphs(path: str, decoder: _Decoder):
    para: list[str] = []
    for line in _read_text(path, "line", decoder):
        if line.strip():
            para.append(line)
        elif para:
            yield "\n".join(para)
            para = []
    if para:
        yield "\n".join(para)


def _read_jsonl(path: str, field: str, decoder: _Decoder):
    for lineno, line in enumerate(_read_text(path, "line", decoder), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CtstoreError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or field not in obj:
            raise CtstoreError(f"{path}:{lineno}: no field {field!r} (use --field)")
        value = obj[field]
        if value is None:
            continue
        if not isinstance(value, str):
            raise CtstoreError(f"{path}:{lineno}: field {field!r} is {type(value).__name__}, not a string")
        yield value


def _read_parquet(path: str, column: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise CtstoreError(f"{path}: not a readable Parquet file ({exc})") from None
    if column not in pf.schema_arrow.names:
        raise CtstoreError(f"{path}: no column {column!r} (columns: {', '.join(pf.schema_arrow.names)}; use --column)")
    kind = pf.schema_arrow.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise CtstoreError(f"{path}: column {column!r} has type {kind}, not string")
    try:
        for batch in pf.iter_batches(columns=[column], batch_size=8192):
            yield from (v for v in batch.column(0).to_pylist() if v is not None)
    except (OSError, pa.ArrowException) as exc:
        raise CtstoreError(f"{path}: corrupt Parquet data ({exc})") from None


def iter_documents(path: str, params: TokenizeParams, decoder: _Decoder):
    fmt = _format_of(path)
    if fmt == "jsonl":
        return _read_jsonl(path, params.field, decoder)
    if fmt == "parquet":
        return _read_parquet(path, params.column)
    if fmt == "arrow":
        return read_arrow(path, params.column)
    if params.split == "paragraph":
        return _read_paragraphs(path, decoder)
    return _read_text(path, params.split, decoder)


def _batches(files: list[str], params: TokenizeParams, stats: dict):
    """Yield lists of documents of about TEXT_BATCH_BYTES characters."""
    batch, size = [], 0
    for path in files:
        decoder = _Decoder(path, params.strict)
        for doc in iter_documents(path, params, decoder):
            if not doc:
                continue
            batch.append(doc)
            size += len(doc)
            if size >= TEXT_BATCH_BYTES:
                yield batch, size
                batch, size = [], 0
        stats["replaced_bytes"] += decoder.replaced
    if batch:
        yield batch, size


def _encode_batch(core, docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [core.encode_ordinary(d) for d in docs]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    values = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.uint32, count=int(lengths.sum()))
    return values, lengths


def tokenize_corpus(inputs: list[str], workspace: Workspace | None = None, *, params: TokenizeParams | None = None,
                    threads: int | None = None, force: bool = False):
    """Tokenize a corpus into a ``tokens`` artifact (reused when it already exists).

    Parameters
    ----------
    inputs : files, directories and glob patterns.
    params : document splitting, fields, encoding, strictness, shard size.
    threads : encoding threads (default: all cores).
    """
    ws = workspace or Workspace()
    params = params or TokenizeParams()
    files = expand_inputs(inputs)
    enc, identity = load_encoding(params.encoding)
    sources = [_file_identity(p) for p in files]
    param_dict = asdict(params) | {"encoding": identity}
    fp = fingerprint("tokens", FORMAT_VERSION, param_dict, {}, sources)
    total_bytes = sum(s["bytes"] for s in sources)

    def build(path: str) -> dict:
        return _tokenize_into(ws, path, files, params, enc, identity, param_dict, sources, total_bytes,
                              threads or os.cpu_count() or 1)

    artifact, _ = build_artifact(ws, "tokens", fp, build, force=force)
    return artifact


def _tokenize_into(ws, path, files, params, enc, identity, param_dict, sources, total_bytes, threads) -> dict:
    timings: dict = {}
    stats = {"replaced_bytes": 0}
    n_vocab = enc.n_vocab
    unigram = np.zeros(n_vocab, dtype=np.int64)
    writer = ShardWriter(ws.fs, path, shard_tokens=params.shard_tokens)
    n_docs = n_tokens = n_chars = 0
    log(f"tokenize: {len(files)} file(s), {total_bytes / 1e6:.1f} MB, encoding {identity['name']} "
        f"(V={n_vocab}), {threads} thread(s)")
    bar = progress(total=total_bytes, unit="B", unit_scale=True, desc="tokenize")
    with stopwatch(timings, "tokenize_s"), ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()

        def drain_one():
            nonlocal n_docs, n_tokens
            future, nchars = pending.popleft()
            values, lengths = future.result()
            unigram[:] += np.bincount(values, minlength=n_vocab)
            writer.add(values, lengths)
            n_docs += int((lengths > 0).sum())
            n_tokens += int(values.size)
            bar.update(nchars)
            bar.set_postfix_str(f"{n_tokens / max(bar.format_dict['elapsed'], 1e-9) / 1e6:.2f}M tok/s")

        for docs, nchars in _batches(files, params, stats):
            pending.append((pool.submit(_encode_batch, enc._core_bpe, docs), nchars))
            n_chars += nchars
            while len(pending) > 2 * threads:
                drain_one()
        while pending:
            drain_one()
        shards = writer.close()
    bar.close()
    if n_tokens == 0:
        raise CtstoreError(f"{', '.join(files[:3])}: corpus is empty (no tokens after reading)")
    if stats["replaced_bytes"]:
        log(f"tokenize: replaced {stats['replaced_bytes']} invalid UTF-8 byte(s) with U+FFFD (--strict refuses)")
    save_npy(ws.fs, f"{path}/unigram.npy", unigram.astype(np.uint64))
    rate = total_bytes / max(timings["tokenize_s"], 1e-9) / 1e6
    log(f"tokenize: {n_docs} docs, {n_tokens} tokens, {len(shards)} shard(s), {rate:.1f} MB/s")
    return {
        "format_version": FORMAT_VERSION,
        "params": param_dict,
        "inputs": {},
        "tokenizer": identity["name"],
        "n_vocab": n_vocab,
        "docs": n_docs,
        "tokens": n_tokens,
        "source_bytes": total_bytes,
        "replaced_bytes": stats["replaced_bytes"],
        "sources": [{"file": f, **s} for f, s in zip(files, sources)],
        "shards": shards,
        "timings": timings,
        "mb_per_s": round(rate, 2),
    }
