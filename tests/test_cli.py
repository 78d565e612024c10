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
