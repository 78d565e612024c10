"""Raw bytes → text for ``tokenize``: decompression, UTF-8 decoding, text in blocks.

``.gz .bz2 .xz .zst`` files are decompressed as a stream, ``READ_BLOCK`` bytes at
a time, so a decompression bomb never inflates more than one block; any
decompression failure is a one-line error naming the file. Invalid UTF-8 becomes
U+FFFD and is counted (:class:`_Decoder`), or is an error with ``strict``.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import re
import threading
import zlib

from ..errors import CtstoreError

COMPRESSION = {".gz": gzip.GzipFile, ".bz2": bz2.BZ2File, ".xz": lzma.LZMAFile}
READ_BLOCK = 8 << 20  # bytes read (after decompression) per step


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
