"""End-to-end CLI behaviour: --json on stdout, one-line errors, interruption and resume."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import SAMPLE


def ctstore(*args, check=True, **kw):
    proc = subprocess.run([sys.executable, "-m", "ctstore.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "CTSTORE_NO_PROGRESS": "1"}, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def test_tokenize_count_ls_show_json(tmp_path):
    ws = str(tmp_path / "ws")
    out = ctstore("tokenize", str(SAMPLE / "tinyshakespeare.txt"), "-w", ws, "--json")
    tokens = json.loads(out.stdout)
    assert tokens["kind"] == "tokens" and tokens["path"].endswith(tokens["fingerprint"])
    assert "tokenize:" in out.stderr
    out = ctstore("count", tokens["fingerprint"][:10], "-w", ws, "--lags", "2", "--scheduler", "sync", "--json")
    counts = json.loads(out.stdout)
    assert counts["inputs"] == {"tokens": tokens["fingerprint"]} and counts["params"] == {"lags": 2}
    again = json.loads(ctstore("count", tokens["fingerprint"], "-w", ws, "--lags", "2", "--scheduler", "sync",
                               "--json").stdout)
    assert again["fingerprint"] == counts["fingerprint"] and again["created"] == counts["created"]
    listing = ctstore("ls", "-w", ws).stdout
    assert counts["fingerprint"] in listing and f"tokens={tokens['fingerprint']}" in listing
    shown = json.loads(ctstore("show", counts["fingerprint"], "-w", ws, "--json").stdout)
    assert shown["nnz"] == counts["nnz"]


@pytest.mark.parametrize("args,needle", [
    (["tokenize", "/nonexistent/file.txt"], "/nonexistent/file.txt: no such file"),
    (["count", "abcdef"], "abcdef: no complete"),
    (["tokenize", str(SAMPLE), "--encoding", "bogus"], "encoding 'bogus' cannot be loaded"),
    (["synth", "--vocab", "300000"], "--vocab: must be a vocabulary size from 2 to 262144"),
    (["count", "x", "--memory", "lots"], "not a memory size"),
])
def test_errors_are_one_line_with_nonzero_exit(tmp_path, args, needle):
    proc = ctstore(*args, "-w", str(tmp_path / "ws"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("ctstore: error:"), proc.stderr
    assert needle in proc.stderr
    assert proc.stdout == ""


def test_workspace_is_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    proc = ctstore("ls", "-w", str(f), check=False)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr


def test_synth_is_deterministic(tmp_path):
    a = json.loads(ctstore("synth", "--vocab", "1000", "--tokens", "50K", "--seed", "7", "-w",
                           str(tmp_path / "a"), "--json").stdout)
    b = json.loads(ctstore("synth", "--vocab", "1000", "--tokens", "50K", "--seed", "7", "-w",
                           str(tmp_path / "b"), "--json").stdout)
    assert a["fingerprint"] == b["fingerprint"] and a["tokens"] == 50_000
    ua = np.load(os.path.join(a["path"], "unigram.npy"))
    ub = np.load(os.path.join(b["path"], "unigram.npy"))
    assert np.array_equal(ua, ub) and ua.sum() == 50_000
    # Zipf: the most frequent token is far more common than the median one
    assert np.sort(ua)[-1] > 20 * max(1, np.median(ua))


@pytest.mark.slow
def test_count_killed_midway_then_rerun_is_identical(tmp_path):
    from ctstore.formats.counts import CountStore
    from ctstore.workspace import Workspace

    ws_dir = str(tmp_path / "ws")
    tokens = json.loads(ctstore("synth", "--vocab", "20000", "--tokens", "6M", "--shard-tokens", "1M",
                                "-w", ws_dir, "--json").stdout)
    cmd = [sys.executable, "-m", "ctstore.cli", "count", tokens["fingerprint"], "-w", ws_dir, "--lags", "4",
           "--scheduler", "sync", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = [d for d in glob.glob(f"{ws_dir}/tmp/counts-*/map-*") if ".partial" not in d]
        if done:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ws = Workspace(ws_dir)
    assert ws.list("counts") == [], "a killed count must not look complete"
    rerun = json.loads(ctstore(*cmd[3:-1], "--json").stdout)
    ref_ws = str(tmp_path / "ref")
    ctstore("synth", "--vocab", "20000", "--tokens", "6M", "--shard-tokens", "1M", "-w", ref_ws)
    reference = json.loads(ctstore("count", tokens["fingerprint"], "-w", ref_ws, "--lags", "4",
                                   "--scheduler", "sync", "--json").stdout)
    assert rerun["fingerprint"] == reference["fingerprint"] and rerun["nnz"] == reference["nnz"]
    a = CountStore(os.path.join(rerun["path"], "counts.zarr"))
    b = CountStore(os.path.join(reference["path"], "counts.zarr"))
    assert np.array_equal(a.unigram, b.unigram)
    for lag in range(1, 5):
        assert (a.matrix(lag) != b.matrix(lag)).nnz == 0


HEAVY = ("torch", "dask", "zarr", "pyarrow")


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["ls"], ["show", "x"], ["gc"], ["verify", "x"]])
def test_parser_and_workspace_tools_import_no_heavy_library(tmp_path, argv):
    """Structural, not timed: building the parser (and running ls) in a fresh process imports no heavy library."""
    code = ("import sys\nfrom ctstore.cli import build_parser, main\n"
            f"parser = build_parser({argv!r})\n"
            f"if {argv[0]!r} == 'ls':\n    main(['ls', '-w', {str(tmp_path / 'ws')!r}])\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_a_stage_command_builds_only_its_own_parser():
    from ctstore.cli import build_parser

    parser = build_parser(["synth", "--vocab", "4K"])
    assert parser.parse_args(["synth", "--vocab", "4K"]).vocab == 4000
    help_text = " ".join(parser.format_help().split())
    from ctstore import stages

    assert all(name in help_text and stages.SUMMARIES[name] in help_text for name in stages.REGISTRY)


def test_listed_summaries_are_the_stage_records_help():
    from ctstore import stages

    assert set(stages.SUMMARIES) == set(stages.REGISTRY)
    assert {name: stages.stage(name).help for name in stages.REGISTRY} == stages.SUMMARIES


def _fake_artifact(ws, kind, fp, manifest):
    path = os.path.join(ws, kind, fp)
    os.makedirs(path)
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump({"kind": kind, "fingerprint": fp, "format_version": 2, "created": 1.0, **manifest}, f)


def test_ls_kind_accepts_plural_and_refuses_unknown_kinds(tmp_path):
    ws = str(tmp_path / "ws")
    _fake_artifact(ws, "run", "a" * 20, {"init": "spectral", "steps": 150, "final_val_ppl": 412.5,
                                         "frozen_embedding_rows": "all but <unk>", "tie_head": False,
                                         "embed_scale": "unscaled", "inputs": {"model": "b" * 20}})
    _fake_artifact(ws, "model", "b" * 20, {"init": "spectral", "operator": "circulant"})
    for kind in ("run", "runs"):
        lines = ctstore("ls", "--kind", kind, "-w", ws).stdout.splitlines()
        assert len(lines) == 1 and lines[0].startswith("run ") and "a" * 20 in lines[0]
        assert "init spectral (circulant), E frozen, unscaled E, untied head, 150 steps, ppl 412.50" in lines[0]
    assert "spectral (circulant)" in ctstore("ls", "--kind", "models", "-w", ws).stdout
    proc = ctstore("ls", "--kind", "rnus", "-w", ws, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("ctstore: error: --kind rnus: unknown artifact kind (did you mean run?); kinds: tokens, "
                           "counts, embeddings, model, run, report\n")
