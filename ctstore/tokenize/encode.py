"""Documents → tokens for ``tokenize``: safe cut points, pieces of bounded size, batches encoded on threads.

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

import itertools
import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CtstoreError, write_error
from ..formats.tokens import TokensWriter
from ..location import Location
from ..log import log, progress, stopwatch
from .decode import _SURROGATE, _Decoder
from .readers import MAX_PIECE_CHARS, PIECE_CHARS, _checked_documents, _Part, iter_documents

if TYPE_CHECKING:
    from .stage import TokenizeParams

TEXT_BATCH_BYTES = 256 << 10


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


def _tokenize_into(out: Location, files, params, enc, identity, param_dict, sources, total_bytes, threads,
                   opened=None) -> dict:
    """Read, encode (``threads`` threads) and write every file into ``out``; returns the tokens manifest body."""
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
