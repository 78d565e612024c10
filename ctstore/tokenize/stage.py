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

Inputs are de-duplicated by file identity (device and inode, so a file reached
through symbolic links or hard links is read once); directory symlinks are
followed, but never into a directory already visited (no loops). Anything that
is not a regular file (FIFOs, devices, sockets) is skipped inside directories
and refused when named directly, by type and before it is opened.

Each source file's content hash enters the fingerprint. Text and JSONL files
are hashed again as they are read (raw bytes, before decompression); a file
whose content changed between the two fails the build. Parquet files are read
by random access, so they are checked by size, modification time and inode.

Long documents are encoded in pieces of about ``PIECE_CHARS`` characters, cut
only where cl100k-style pre-tokenisation has a boundary whatever follows (see
:func:`_safe_cut`), so their tokens equal those of the whole document. Only a
run of more than ``MAX_PIECE_CHARS`` characters without such a boundary is cut
by force; the manifest counts these cuts (``forced_splits``).

Speed: tiktoken's Rust core releases the GIL, so ``threads`` worker threads each
encode a batch of about 4 MB of documents with a plain loop over
``encode_ordinary``. That avoids the per-document future that
``encode_ordinary_batch`` creates, which dominates for line-sized documents.
"""

from __future__ import annotations

import bz2
import codecs
import fnmatch
import glob
import gzip
import hashlib
import itertools
import json
import lzma
import os
import re
import stat
import threading
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace

import numpy as np

from .encoding import DEFAULT_ENCODING, load_encoding
from .errors import CtstoreError
from .formats.tokens import DEFAULT_SHARD_TOKENS, FORMAT_VERSION, TokensWriter
from .hfdata import hf_dataset_files, read_arrow
from .location import Location
from .log import log, progress, stopwatch
from .units import COUNT, POSITIVE, format_bytes, parse_memory
from .stage import Input, Option, Stage, param
from .workspace import Workspace, build_artifact

__all__ = ["TokenizeParams", "tokenize_corpus", "expand_inputs"]

COMPRESSION = {".gz": gzip.GzipFile, ".bz2": bz2.BZ2File, ".xz": lzma.LZMAFile}
TEXT_BATCH_BYTES = 256 << 10
READ_BLOCK = 8 << 20  # bytes read (after decompression) per step
PIECE_CHARS = 256 << 10  # long documents are encoded in pieces of about this many characters
MAX_PIECE_CHARS = 1 << 20  # a run this long without a safe cut point is cut by force (tiktoken is superlinear in it)
BYTES_PER_OPEN_TOKEN = 40  # peak bytes per token of a document being written (pieces, concatenation, Arrow's writer)
DEFAULT_MAX_DOC_TOKENS = 8 << 20


@dataclass(frozen=True)
class TokenizeParams:
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

    def __post_init__(self):
        if self.split not in ("paragraph", "line", "file"):
            raise CtstoreError(f"--split must be paragraph, line or file, not {self.split!r}")
        if self.shard_tokens <= 0:
            raise CtstoreError("--shard-tokens must be positive")
        if not isinstance(self.max_doc_tokens, int) or self.max_doc_tokens <= 0:
            raise CtstoreError(f"--max-doc-tokens must be a positive whole number, not {self.max_doc_tokens!r}")


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files named by paths, directories and glob patterns, sorted, without duplicates.

    Duplicates are found by file identity (device, inode), not by path string;
    directory symlinks are followed unless they lead back into a directory
    already visited; non-regular files are skipped (inside directories and
    patterns, with a log line) or refused (when named directly).
    """
    files: list[str] = []
    seen: set[tuple[int, int]] = set()

    def add(paths) -> None:
        for path, st in paths:
            key = (st.st_dev, st.st_ino)
            if key not in seen:
                seen.add(key)
                files.append(path)

    for item in inputs:
        st = _stat_or_none(item)
        if st is not None and stat.S_ISDIR(st.st_mode) and (hf_files := hf_dataset_files(item)) is not None:
            add([(p, os.stat(p)) for p in hf_files])  # a Hugging Face datasets directory (ctstore.hfdata)
        elif st is not None and stat.S_ISDIR(st.st_mode):
            found = sorted(_walk_files(item))
            if not found:
                raise CtstoreError(f"{item}: directory contains no files")
            add(found)
        elif any(ch in item for ch in "*?["):
            found = sorted(_glob_files(item))
            if not found:
                raise CtstoreError(f"{item}: pattern matches no files")
            add(found)
        elif st is not None:
            if not stat.S_ISREG(st.st_mode):
                raise CtstoreError(f"{item}: not a regular file ({_file_kind(st.st_mode)}); refusing to read it")
            add([(item, st)])
        elif os.path.lexists(item):
            raise CtstoreError(f"{item}: broken symbolic link")
        else:
            raise CtstoreError(f"{item}: no such file or directory")
    return files


def _stat_or_none(path: str):
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise CtstoreError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _skip(path: str, why: str) -> None:
    log(f"tokenize: skipping {path!r}: {why}")


def _walk(top: str, visited: set):
    """Yield ``(path, stat, is_dir)`` below ``top`` (symlinks followed, each directory entered once)."""
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError as exc:
        raise CtstoreError(f"{top}: cannot list directory ({exc.strerror or exc})") from None
    for entry in entries:
        path = os.path.join(top, entry.name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            _skip(path, "broken symbolic link")
            continue
        except OSError as exc:
            if exc.errno == getattr(os, "ELOOP", -1) or isinstance(exc, PermissionError):
                _skip(path, exc.strerror or str(exc))
                continue
            raise CtstoreError(f"{path}: cannot read ({exc.strerror or exc})") from None
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in visited:
                if entry.is_symlink():
                    _skip(path, "symbolic link to a directory already visited (not followed)")
                continue
            visited.add(key)
            yield path, st, True
            yield from _walk(path, visited)
        else:
            yield path, st, False


def _walk_files(top: str):
    """Regular files below a directory given as input (names starting with '.' left out)."""
    st = os.stat(top)
    for path, st, is_dir in _walk(top, {(st.st_dev, st.st_ino)}):
        if is_dir or os.path.basename(path).startswith("."):
            continue
        if stat.S_ISREG(st.st_mode):
            yield path, st
        else:
            _skip(path, f"{_file_kind(st.st_mode)}, not a regular file")


def _glob_files(pattern: str):
    """Regular files matching a glob pattern; ``**`` is walked without following symlink loops."""
    if "**" not in pattern:
        candidates = ((p, _stat_or_none(p)) for p in sorted(glob.glob(pattern)))
    else:
        parts = pattern.split(os.sep)
        fixed = 0
        while fixed < len(parts) - 1 and not any(ch in parts[fixed] for ch in "*?["):
            fixed += 1
        base = os.sep.join(parts[:fixed]) or ("." if not pattern.startswith(os.sep) else os.sep)
        if pattern.startswith(os.sep) and fixed == 1:
            base = os.sep
        rest = parts[fixed:]
        st = _stat_or_none(base)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return
        prefix = "" if fixed == 0 and not pattern.startswith(os.sep) else base
        candidates = []
        for path, st, _ in _walk(base, {(st.st_dev, st.st_ino)}):
            rel = os.path.relpath(path, base).split(os.sep)
            if _glob_match(rest, rel):
                candidates.append((os.path.join(prefix, *rel) if prefix else os.path.join(*rel), st))
    for path, st in candidates:
        if st is None:
            continue
        if stat.S_ISREG(st.st_mode):
            yield path, st
        elif not stat.S_ISDIR(st.st_mode):
            _skip(path, f"{_file_kind(st.st_mode)}, not a regular file")


def _glob_match(pattern: list[str], parts: list[str]) -> bool:
    """Match path components against glob components (``**``: zero or more directories), like :mod:`glob`."""
    if not pattern:
        return not parts
    head = pattern[0]
    if head == "**":
        if _glob_match(pattern[1:], parts):
            return True
        return bool(parts) and not parts[0].startswith(".") and _glob_match(pattern, parts[1:])
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and _glob_match(pattern[1:], parts[1:])


def _open_regular(path: str):
    """Open a source file for reading, refusing anything but a regular file *before* reading (never blocks)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise CtstoreError(f"{path}: cannot open ({exc.strerror or exc})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise CtstoreError(f"{path}: not a regular file ({_file_kind(st.st_mode)}); refusing to read it")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), st


class _HashedFile:
    """The raw bytes of a source file, hashed as they are read.

    Comparing the hash of what was actually read with the hash that entered the
    fingerprint catches a file that changed in between (or while being read).
    """

    mode = "rb"

    def __init__(self, path: str):
        self.path = path
        self._f, self.stat = _open_regular(path)
        self._hash = hashlib.blake2b(digest_size=16)
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._f.read(n)
        except OSError as exc:
            raise CtstoreError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
        self._hash.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._f.closed

    def close(self) -> None:
        self._f.close()

    def finish(self) -> dict:
        """Read (and hash) whatever is left, close, and return the identity of everything read."""
        while self.read(READ_BLOCK):
            pass
        self.close()
        return {"blake2b": self._hash.hexdigest(), "bytes": self.size}


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


def _file_identity(path: str, stats: dict | None = None) -> dict:
    """Content hash of a source file: the fingerprint never depends on paths or mtimes.

    ``stats`` (optional) receives the file's ``os.stat`` result taken when it was opened.
    """
    source = _HashedFile(path)
    try:
        if stats is not None:
            stats[path] = source.stat
        return source.finish()
    finally:
        source.close()


def _changed(path: str, how: str) -> CtstoreError:
    return CtstoreError(f"{path}: changed while being tokenized ({how}); nothing was published, "
                        f"rerun once the file is no longer being written")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


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

    def decode_value(self, data: bytes, where: str) -> str:
        """Decode one complete value (a Parquet cell), counting or refusing invalid UTF-8."""
        _Decoder._local.current = self
        try:
            return data.decode("utf-8", "strict" if self.strict else "ctstore-count")
        except UnicodeDecodeError as exc:
            raise CtstoreError(f"{self.path}: invalid UTF-8 in {where} at byte {exc.start} (--strict is set)") \
                from None

    def without_surrogates(self, value: str, where: str) -> str:
        """Lone UTF-16 surrogates (from JSON ``\\ud800`` escapes) are not text: U+FFFD, counted, or an error."""
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError as exc:
            if self.strict:
                raise CtstoreError(f"{self.path}:{where}: lone UTF-16 surrogate \\u{ord(value[exc.start]):04x} "
                                   f"in a JSON string (--strict is set)") from None
        fixed, n = _SURROGATE.subn("\ufffd", value)
        self.replaced += n
        return fixed


_SURROGATE = re.compile("[\ud800-\udfff]")


def _count_replacement(exc: UnicodeDecodeError):
    _Decoder._local.current.replaced += exc.end - exc.start
    return "\ufffd", exc.end


codecs.register_error("ctstore-count", _count_replacement)


def _check_not_binary(path: str, head: bytes) -> None:
    if b"\x00" in head[:8192]:
        raise CtstoreError(f"{path}: looks like a binary file (NUL bytes), not text")


class _Part(str):
    """A piece of a document whose text continues in the next item the reader yields.

    Readers yield documents as plain ``str``; a long document may come as
    ``_Part`` items followed by one plain ``str`` (possibly empty) that ends it.
    """

    __slots__ = ()


def _decompress_errors() -> tuple:
    errors = [OSError, EOFError, zlib.error, lzma.LZMAError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover - zstandard is a dependency
        pass
    return tuple(errors)


def _decompressed(path: str, source):
    for suffix, opener in COMPRESSION.items():
        if path.endswith(suffix):
            return gzip.GzipFile(fileobj=source, mode="rb") if opener is gzip.GzipFile else opener(source, "rb")
    if path.endswith(".zst"):
        return _ZstdStream(source)
    return source


class _ZstdStream:
    """Zstandard frames one after another, refusing a truncated last frame.

    ``zstandard``'s stream reader ends silently inside an incomplete frame (a
    truncated file would be tokenized in part); this reader checks that every
    frame it started was finished. Input is fed in small chunks so that one
    chunk cannot expand into an unbounded amount of output.
    """

    RAW_CHUNK = 1 << 12

    def __init__(self, source):
        import zstandard

        self.source, self._dctx = source, zstandard.ZstdDecompressor()
        self._obj, self._started, self._buf, self._done = self._dctx.decompressobj(), False, bytearray(), False

    def read(self, n: int) -> bytes:
        import zstandard

        while len(self._buf) < n and not self._done:
            raw = self.source.read(self.RAW_CHUNK)
            if not raw:
                if self._started:
                    raise zstandard.ZstdError("file ends inside a frame (truncated)")
                self._done = True
                break
            self._buf += self._obj.decompress(raw)
            self._started = True
            while self._obj.eof:
                rest = self._obj.unused_data
                self._obj, self._started = self._dctx.decompressobj(), False
                if not rest:
                    break
                self._buf += self._obj.decompress(rest)
                self._started = True
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def close(self) -> None:
        self._buf = bytearray()


def _text_blocks(path: str, decoder: _Decoder, source):
    """Decoded text of a (possibly compressed) file in blocks; any decompression failure is a one-line error."""
    stream = _decompressed(path, source)
    errors = _decompress_errors()
    first = True
    try:
        while True:
            try:
                data = stream.read(READ_BLOCK)
            except errors as exc:
                raise CtstoreError(f"{path}: cannot decompress ({_one_line(exc)})") from None
            if first:
                _check_not_binary(path, data)
                first = False
            if not data:
                tail = decoder.decode(b"", final=True)
                if tail:
                    yield tail
                return
            text = decoder.decode(data)
            if text:
                yield text
    finally:
        if stream is not source:
            try:
                stream.close()
            except errors:
                pass


def _line_fragments(blocks):
    """``(text, ends_line)`` pairs: each line whole, or in fragments when it spans blocks."""
    for block in blocks:
        lines = block.split("\n")
        last = lines.pop()
        for line in lines:
            yield line, True
        if last:
            yield last, False
    yield "", True


def _source(path: str, source):
    return source if source is not None else _HashedFile(path)


def _read_text(path: str, split: str, decoder: _Decoder, source=None):
    """Documents of a text file: lines (``split="line"``) or the whole file (``"file"``), long ones in parts."""
    source = _source(path, source)
    if split == "paragraph":
        yield from _read_paragraphs(path, decoder, source)
        return
    if split == "file":
        for block in _text_blocks(path, decoder, source):
            yield _Part(block)
        yield ""
        return
    for text, ends in _line_fragments(_text_blocks(path, decoder, source)):
        yield text if ends else _Part(text)


def _read_paragraphs(path: str, decoder: _Decoder, source=None):
    """Blank-line separated paragraphs (their lines joined by newlines), long ones in parts."""
    out: list[str] = []  # text of the current paragraph not yet yielded
    size = 0
    in_para = False  # a paragraph has started
    line_open = False  # the current line is non-blank and already belongs to the paragraph
    blank_so_far: list[str] = []  # leading fragments of the current line while they are all whitespace
    for text, ends in _line_fragments(_text_blocks(path, decoder, _source(path, source))):
        if line_open:
            out.append(text)
            size += len(text)
        elif text.strip() or (not ends and sum(map(len, blank_so_far)) > MAX_PIECE_CHARS):
            # (a line of more whitespace than MAX_PIECE_CHARS is taken as non-blank: memory stays bounded)
            if in_para:
                out.append("\n")
            out.extend(blank_so_far)
            out.append(text)
            size += 1 + len(text) + sum(map(len, blank_so_far))
            blank_so_far = []
            in_para = line_open = True
        elif not ends:
            blank_so_far.append(text)
            continue
        else:  # a blank line ends the paragraph
            blank_so_far = []
            if in_para:
                yield "".join(out)
                out, size, in_para = [], 0, False
            continue
        if ends:
            line_open = False
        if size > PIECE_CHARS:
            yield _Part("".join(out))
            out, size = [], 0
    if in_para:
        yield "".join(out)


def _read_jsonl(path: str, field: str, decoder: _Decoder, source=None):
    parts: list[str] = []
    lineno = 0
    for text, ends in _line_fragments(_text_blocks(path, decoder, _source(path, source))):
        if not ends:
            parts.append(text)
            continue
        lineno += 1
        line = "".join((*parts, text)) if parts else text
        parts = []
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CtstoreError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise CtstoreError(f"{path}:{lineno}: not valid JSON (nested too deeply for the parser)") from None
        except ValueError as exc:  # e.g. an integer beyond Python's digit limit
            raise CtstoreError(f"{path}:{lineno}: not valid JSON ({_one_line(exc)})") from None
        if not isinstance(obj, dict) or field not in obj:
            raise CtstoreError(f"{path}:{lineno}: no field {field!r} (use --field)")
        value = obj[field]
        if value is None:
            continue
        if not isinstance(value, str):
            raise CtstoreError(f"{path}:{lineno}: field {field!r} is {type(value).__name__}, not a string")
        if "\\u" in line:
            value = decoder.without_surrogates(value, str(lineno))
        yield value


def _read_parquet(path: str, column: str, decoder: _Decoder | None = None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    decoder = decoder or _Decoder(path, False)
    errors = (OSError, ValueError, pa.ArrowException)
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
    except errors as exc:
        raise CtstoreError(f"{path}: not a readable Parquet file ({_one_line(exc)})") from None
    if column not in names:
        raise CtstoreError(f"{path}: no column {column!r} (columns: {', '.join(map(str, names))}; use --column)")
    kind = pf.schema_arrow.field(column).type
    value_kind = kind.value_type if pa.types.is_dictionary(kind) else kind  # dictionary-encoded strings are strings
    if not (pa.types.is_string(value_kind) or pa.types.is_large_string(value_kind)):
        raise CtstoreError(f"{path}: column {column!r} has type {kind}, not string")
    row = 0
    try:
        for batch in pf.iter_batches(columns=[column], batch_size=8192):
            cells = batch.column(0)
            if pa.types.is_dictionary(cells.type):
                cells = cells.dictionary_decode()
            try:
                values = cells.to_pylist()
            except UnicodeDecodeError:  # invalid UTF-8 in a string column: decode like text files do
                raw = cells.cast(pa.large_binary()).to_pylist()
                values = [None if v is None else decoder.decode_value(v, f"column {column!r}, row {row + i}")
                          for i, v in enumerate(raw)]
            row += len(cells)
            yield from (v for v in values if v is not None)
    except errors as exc:
        raise CtstoreError(f"{path}: corrupt Parquet data ({_one_line(exc)})") from None
    finally:
        pf.close()


def iter_documents(path: str, params: TokenizeParams, decoder: _Decoder, source=None):
    """Documents of one file (a long one as ``_Part`` items, see :class:`_Part`)."""
    fmt = _format_of(path)
    if fmt == "jsonl":
        return _read_jsonl(path, params.field, decoder, source)
    if fmt == "parquet":
        return _read_parquet(path, params.column, decoder)
    if fmt == "arrow":
        return read_arrow(path, params.column)
    return _read_text(path, params.split, decoder, source)


def _checked_documents(path: str, params: TokenizeParams, decoder: _Decoder, expected: dict, opened):
    """Documents of one file, failing if it is not the content whose hash entered the fingerprint."""
    if _format_of(path) == "parquet":
        yield from iter_documents(path, params, decoder)
        now = _stat_or_none(path)
        key = ("st_size", "st_mtime_ns", "st_ino", "st_dev")
        if now is None or opened is None or any(getattr(now, k) != getattr(opened, k) for k in key):
            raise _changed(path, "size, modification time or inode differ from before reading")
        return
    source = _HashedFile(path)
    try:
        yield from iter_documents(path, params, decoder, source)
        got = source.finish()
    finally:
        source.close()
    if got != expected:
        raise _changed(path, f"read {got['bytes']} bytes with a content hash other than the "
                             f"{expected['bytes']} bytes hashed for the fingerprint")


_SAFE_CUT = re.compile(r"(?<=\S)(?= )|(?<=\n)(?=\S)")  # both rules: patterns with \s*[\r\n] (cl100k, o200k)
_SAFE_CUT_SPACE = re.compile(r"(?<=\S)(?= )")  # rule (a) only: GPT-2 style patterns (r50k, p50k)
_NO_CUT = re.compile(r"(?!)")  # an unknown pattern: no safe points, only forced cuts


def safe_cut_rule(pat_str: str) -> re.Pattern:
    """The cut points that are safe for a tiktoken pre-tokenisation pattern (see :func:`_safe_cut`)."""
    if r"\s*[\r\n]" in pat_str:
        return _SAFE_CUT
    if r"\s+(?!\S)" in pat_str:
        return _SAFE_CUT_SPACE
    return _NO_CUT


def _safe_cut(text: str, lo: int, hi: int, last: bool = True, rule: re.Pattern = _SAFE_CUT) -> int | None:
    r"""A position ``lo <= p <= hi`` where ``text`` can be cut without changing its tokens, or None.

    Safe are (a) before a space that follows a non-space and (b) after a newline
    that precedes a non-space (``\S`` in Python's sense, a superset of the
    Unicode White_Space that tiktoken's ``\s`` means). At such a point no
    alternative of the cl100k pre-tokenisation pattern matches across, and the
    ``$`` / ``(?!\S)`` look-aheads give the same matches on either side, so
    ``encode(a + b) == encode(a) + encode(b)``. Rule (b) relies on the
    ``\s*[\r\n]`` alternative of cl100k/o200k; GPT-2 style patterns (r50k, p50k)
    split ``"  \n"`` differently at the end of a text, so they get rule (a) only.
    """
    if not last:
        m = rule.search(text, lo, hi + 1)
        return m.start() if m else None
    for width in (64, 4096, hi - lo):
        start = max(lo, hi - width)
        found = None
        for m in rule.finditer(text, start, hi + 1):
            found = m.start()
        if found is not None or start == lo:
            return found
    return None


def _cut_points(text: str, final: bool, piece: int, longest: int, rule: re.Pattern = _SAFE_CUT
                ) -> tuple[list[int], int]:
    """Where to cut ``text`` into pieces of about ``piece`` characters; returns ``(cuts, forced)``.

    Unless ``final``, the text continues and the tail after the last cut is kept
    (at most ``longest`` characters). A cut is forced only after ``longest``
    characters without a safe point.
    """
    cuts, forced, start, n = [], 0, 0, len(text)
    while True:
        remaining = n - start
        if remaining <= piece or (not final and remaining < longest):
            break
        cut = _safe_cut(text, start + 1, start + piece, rule=rule)
        if cut is None:
            cut = _safe_cut(text, start + piece + 1, min(n - 1, start + longest), last=False, rule=rule)
        if cut is None:
            if remaining <= longest:
                break  # final and short enough: one piece
            cut, forced = start + longest, forced + 1
        cuts.append(cut)
        start = cut
    return cuts, forced


def _pieces(items, stats: dict, piece: int = PIECE_CHARS, longest: int = MAX_PIECE_CHARS,
            rule: re.Pattern = _SAFE_CUT):
    """Turn a reader's items into ``(text, ends_document)`` pieces of bounded size (see :func:`_safe_cut`)."""
    buf: list[str] = []
    buf_len = 0
    emitted = False  # part of the current document has been yielded
    for item in items:
        final = not isinstance(item, _Part)
        if final and not buf and not emitted and len(item) <= piece:
            if item:
                yield item, True
            continue
        if item:
            buf.append(item)
            buf_len += len(item)
        if not final and buf_len < longest:
            continue
        text = buf[0] if len(buf) == 1 else "".join(buf)
        buf = []
        cuts, forced = _cut_points(text, final, piece, longest, rule)
        stats["forced_splits"] = stats.get("forced_splits", 0) + forced
        start = 0
        for cut in cuts:
            yield str(text[start:cut]), False
            start, emitted = cut, True
        rest = str(text[start:])
        if final:
            if rest or emitted:
                yield rest, True
            buf_len, emitted = 0, False
        else:
            buf, buf_len = ([rest] if rest else []), len(rest)
    if buf or emitted:  # a reader that ended inside a document: end it
        yield "".join(buf), True


def _batches(files: list[str], params: TokenizeParams, stats: dict, sources: list[dict] | None = None,
             opened: dict | None = None, rule: re.Pattern = _SAFE_CUT):
    """Yield ``(texts, ends, nchars, path)``: pieces of documents, about TEXT_BATCH_BYTES characters per batch.

    ``ends[i]`` says whether ``texts[i]`` ends its document.
    """
    batch, ends, size = [], [], 0
    for i, path in enumerate(files):
        decoder = _Decoder(path, params.strict)
        if sources is None:
            docs = iter_documents(path, params, decoder)
        else:
            docs = _checked_documents(path, params, decoder, sources[i], (opened or {}).get(path))
        for text, last in _pieces(docs, stats, rule=rule):
            batch.append(text)
            ends.append(last)
            size += len(text)
            if size >= TEXT_BATCH_BYTES:
                yield batch, ends, size, path
                batch, ends, size = [], [], 0
        stats["replaced_bytes"] += decoder.replaced
    if batch:
        yield batch, ends, size, files[-1]


def _encode_batch(core, texts: list[str], ends: list[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        encoded = [core.encode_ordinary(t) for t in texts]
    except UnicodeEncodeError:  # lone surrogates from some reader: U+FFFD, as tiktoken's own wrapper does
        encoded = [core.encode_ordinary(_SURROGATE.sub("\ufffd", t)) for t in texts]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    values = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.uint32, count=int(lengths.sum()))
    return values, lengths, np.asarray(ends, dtype=bool)


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
    fp = STAGE.fingerprint(replace(params, encoding=identity), {}, sources)
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


def _tokenize_into(out: Location, files, params, enc, identity, param_dict, sources, total_bytes, threads,
                   opened=None) -> dict:
    timings: dict = {}
    stats = {"replaced_bytes": 0, "forced_splits": 0}
    n_vocab = enc.n_vocab
    writer = TokensWriter(out, n_vocab, shard_tokens=params.shard_tokens, max_doc_tokens=params.max_doc_tokens)
    log(f"tokenize: {len(files)} file(s), {total_bytes / 1e6:.1f} MB, encoding {identity['name']} "
        f"(V={n_vocab}), {threads} thread(s)")
    bar = progress(total=total_bytes, unit="B", unit_scale=True, desc="tokenize")
    try:
        with stopwatch(timings, "tokenize_s"), ThreadPoolExecutor(threads) as pool:
            pending: deque = deque()

            def drain_one():
                future, nchars, source = pending.popleft()
                values, lengths, ends = future.result()
                splits = writer.split_docs
                writer.add_pieces(values, lengths, ends)
                if writer.split_docs > splits and not splits:
                    log(f"tokenize: {source}: a document longer than --max-doc-tokens {params.max_doc_tokens} "
                        f"is stored as consecutive documents (same tokens; co-occurrences across each cut are "
                        f"not counted)")
                bar.update(nchars)
                bar.set_postfix_str(f"{writer.tokens / max(bar.format_dict['elapsed'], 1e-9) / 1e6:.2f}M tok/s")

            rule = safe_cut_rule(enc._pat_str)
            for texts, ends, nchars, source in _batches(files, params, stats, sources, opened, rule):
                pending.append((pool.submit(_encode_batch, enc._core_bpe, texts, ends), nchars, source))
                while len(pending) > 2 * threads:
                    drain_one()
            while pending:
                drain_one()
            if writer.tokens == 0:
                raise CtstoreError(f"{', '.join(files[:3])}: corpus is empty (no tokens after reading)")
            written = writer.close()
    except OSError as exc:  # reading errors are CtstoreErrors by now: this is a failed write (full disk, ...)
        from .errors import write_error

        raise write_error(out.url, "the tokens artifact", exc) from None
    finally:
        bar.close()
    if stats["replaced_bytes"]:
        log(f"tokenize: replaced {stats['replaced_bytes']} invalid UTF-8 byte(s) with U+FFFD (--strict refuses)")
    if stats["forced_splits"]:
        log(f"tokenize: {stats['forced_splits']} run(s) of over {MAX_PIECE_CHARS} characters without a safe "
            f"cut point were cut by force (tokens may differ from whole-document encoding at those cuts)")
    rate = total_bytes / max(timings["tokenize_s"], 1e-9) / 1e6
    log(f"tokenize: {written['docs']} docs, {written['tokens']} tokens, "
        f"{len(written['shards'])} shard(s), {rate:.1f} MB/s")
    return {
        **written,
        "params": param_dict,
        "inputs": {},
        "tokenizer": identity["name"],
        "source_bytes": total_bytes,
        "replaced_bytes": stats["replaced_bytes"],
        "forced_splits": stats["forced_splits"],
        "split_documents": writer.split_docs,
        "sources": [{"file": f, **s} for f, s in zip(files, sources)],
        "timings": timings,
        "mb_per_s": round(rate, 2),
    }


STAGE = Stage(
    name="tokenize", kind="tokens", params=TokenizeParams, code_version=FORMAT_VERSION,
    help="text/JSONL/Parquet corpus -> tokens artifact",
    inputs=(Input("inputs", None, "files, directories or glob patterns", nargs="+"),),
    options=(Option("--threads", "encoding threads (default: all cores)", parse=POSITIVE),),
    run=lambda ws, inputs, params, opts: tokenize_corpus(inputs["inputs"], ws, params=params, threads=opts["threads"],
                                                         force=opts["force"], memory=opts["memory"]),
)
