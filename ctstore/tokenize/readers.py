"""Documents of one source file for ``tokenize``, by format.

* ``.txt`` (and any other suffix): ``split="paragraph"`` (blank-line separated),
  ``"line"`` or ``"file"``;
* ``.jsonl``: one JSON object per line, the string in ``field``;
* ``.parquet``: the string column ``column``; ``.arrow``: see :mod:`ctstore.hfdata`.

Readers yield documents as ``str``; a long one comes as :class:`_Part` items of
about ``PIECE_CHARS`` characters. Text and JSONL files are hashed as they are read
(:func:`_checked_documents`): a file whose content is not what was hashed for the
fingerprint fails the build. Parquet files are read by random access, so they are
checked by size, modification time and inode.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..errors import CtstoreError
from ..hfdata import read_arrow
from .decode import COMPRESSION, _Decoder, _line_fragments, _one_line, _text_blocks
from .inputs import _HashedFile, _stat_or_none

if TYPE_CHECKING:
    from .stage import TokenizeParams

PIECE_CHARS = 256 << 10  # long documents are encoded in pieces of about this many characters
MAX_PIECE_CHARS = 1 << 20  # a run this long without a safe cut point is cut by force (tiktoken is superlinear in it)


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


def _changed(path: str, how: str) -> CtstoreError:
    return CtstoreError(f"{path}: changed while being tokenized ({how}); nothing was published, "
                        f"rerun once the file is no longer being written")


class _Part(str):
    """A piece of a document whose text continues in the next item the reader yields.

    Readers yield documents as plain ``str``; a long document may come as
    ``_Part`` items followed by one plain ``str`` (possibly empty) that ends it.
    """

    __slots__ = ()


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
