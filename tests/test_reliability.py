"""Reliability: integrity checks, concurrent writers, full disks, fuzzed inputs, object-store workspaces."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SAMPLE
from ctstore._util import CtstoreError
from ctstore.count import CountParams, count_cooccurrences
from ctstore.countstore import CountStore
from ctstore.integrity import verify_artifact
from ctstore.workspace import Workspace


def cli(*args, env=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "ctstore.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "CTSTORE_NO_PROGRESS": "1", **(env or {})})
    if check and proc.returncode:
        raise AssertionError(proc.stderr)
    return proc


@pytest.fixture
def small_counts(ws, tmp_path):
    f = tmp_path / "c.txt"
    f.write_text((SAMPLE / "tinyshakespeare.txt").read_text()[:200_000])
    from ctstore.tokenize import tokenize_corpus

    tokens = tokenize_corpus([str(f)], ws)
    return count_cooccurrences(tokens, ws, params=CountParams(lags=3), scheduler="sync")


def test_verify_detects_flipped_byte_and_truncation_naming_array_and_chunk(ws, small_counts):
    assert verify_artifact(small_counts) == []
    chunk = os.path.join(small_counts.path, "counts.zarr", "lag_2", "indices", "c", "0")
    data = bytearray(open(chunk, "rb").read())
    data[len(data) // 2] ^= 0x40
    open(chunk, "wb").write(bytes(data))
    problems = verify_artifact(small_counts)
    assert problems == [f"{small_counts}: array counts.zarr/lag_2/indices, chunk 0 is corrupted (content hash differs)"]
    with pytest.raises(CtstoreError, match=r"array lag_2/indices, chunk 0 cannot be read .*run ctstore verify"):
        CountStore.from_artifact(small_counts).matrix(2)
    shard = os.path.join(small_counts.path, "counts.zarr", "unigram", "c", "0")
    with open(shard, "r+b") as f:
        f.truncate(10)
    assert any("unigram, chunk 0 is truncated" in p for p in verify_artifact(small_counts))
    proc = cli("verify", small_counts.fingerprint, "-w", ws.root, check=False)
    assert proc.returncode == 1 and "lag_2/indices, chunk 0" in proc.stderr


def test_two_processes_asking_for_the_same_artifact_produce_one(tmp_path):
    ws = str(tmp_path / "ws")
    tokens = json.loads(cli("synth", "--vocab", "5000", "--tokens", "2M", "-w", ws, "--json").stdout)
    cmd = [sys.executable, "-m", "ctstore.cli", "count", tokens["fingerprint"], "-w", ws, "--lags", "3",
           "--scheduler", "sync", "--json", "-q"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate()[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    a, b = (json.loads(o) for o in outs)
    assert a["fingerprint"] == b["fingerprint"] and a["created"] == b["created"], "the loser reused the winner's"
    assert len(Workspace(ws).list("counts")) == 1 and Workspace(ws).gc(dry_run=True) == []


def test_gc_never_deletes_an_artifact_being_written(tmp_path):
    ws = Workspace(str(tmp_path / "ws"))
    with ws.lock("counts", "abc"):
        ws.prepare("counts", "abc")
        assert ws.gc() == []
        assert os.path.isdir(ws.artifact_path("counts", "abc"))
    assert any(p.endswith("counts/abc") for p in ws.gc())


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6M", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_disk_full_during_count_fails_cleanly_and_rerun_succeeds(tmp_path, tiny_disk):
    ws = str(tiny_disk / "ws")
    tokens = json.loads(cli("synth", "--vocab", "50000", "--tokens", "400K", "--seed", "3", "-w", ws,
                            "--json").stdout)
    proc = cli("count", tokens["fingerprint"], "-w", ws, "--lags", "10", "--scheduler", "sync", "-q", check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("ctstore: error:") and proc.stderr.count("\n") == 1, proc.stderr
    assert "cannot write" in proc.stderr and "free on that disk" in proc.stderr
    assert Workspace(ws).list("counts") == []
    Workspace(ws).gc()
    # more room: the same command now succeeds and the store is exact
    subprocess.run(["mount", "-o", "remount,size=200M", str(tiny_disk)], check=True)
    done = json.loads(cli("count", tokens["fingerprint"], "-w", ws, "--lags", "10", "--scheduler", "sync",
                          "--json").stdout)
    assert done["nnz"]["1"] > 0 and verify_artifact(Workspace(ws).get(done["fingerprint"])) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=3000), kind=st.sampled_from(["txt", "jsonl", "parquet", "txt.gz"]))
def test_fuzzed_inputs_give_documented_errors_only(tmp_path_factory, payload, kind):
    from ctstore.tokenize import tokenize_corpus

    d = tmp_path_factory.mktemp("fuzz")
    f = d / f"input.{kind}"
    f.write_bytes(payload)
    ws = Workspace(str(d / "ws"))
    try:
        art = tokenize_corpus([str(f)], ws)
    except CtstoreError as exc:
        assert "\n" not in str(exc) and str(f) in str(exc)
        assert ws.list() == []
    else:
        assert art.manifest["tokens"] > 0 and verify_artifact(art) == []


def test_huge_single_line_file(tmp_path, ws):
    from ctstore.tokenize import TokenizeParams, tokenize_corpus

    f = tmp_path / "one-line.txt"
    f.write_text("word " * 3_000_000)  # 15 MB, no newline: one document streamed in blocks
    art = tokenize_corpus([str(f)], ws, params=TokenizeParams(split="line"))
    assert art.manifest["docs"] == 1 and art.manifest["tokens"] >= 3_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    import boto3

    boto3.client("s3", endpoint_url=env["FSSPEC_S3_ENDPOINT_URL"], aws_access_key_id="test",
                 aws_secret_access_key="test", region_name="us-east-1").create_bucket(Bucket="ctstore")
    yield env
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.slow
def test_s3_workspace_matches_local(tmp_path, s3_server):
    corpus = tmp_path / "c.txt"
    corpus.write_text((SAMPLE / "tinyshakespeare.txt").read_text()[:300_000])
    results = {}
    for name, ws in (("local", str(tmp_path / "ws")), ("s3", "s3://ctstore/prefix")):
        env = s3_server if name == "s3" else {}
        t = json.loads(cli("tokenize", str(corpus), "-w", ws, "--json", env=env).stdout)
        c = json.loads(cli("count", t["fingerprint"], "-w", ws, "--lags", "3", "--scheduler", "sync", "--json",
                           env=env).stdout)
        e = json.loads(cli("k0", c["fingerprint"], "-w", ws, "--dim", "16", "--v-eff", "1024", "--scheduler",
                           "sync", "--json", env=env).stdout)
        results[name] = (t, c, e)
        assert cli("verify", e["fingerprint"], "-w", ws, env=env).returncode == 0
    (tl, cl, el), (ts, cs, es) = results["local"], results["s3"]
    assert tl["fingerprint"] == ts["fingerprint"] and cl["fingerprint"] == cs["fingerprint"]
    assert cl["nnz"] == cs["nnz"] and el["spectrum_head"] == es["spectrum_head"]
    assert es["path"].startswith("s3://ctstore/prefix/embeddings/")
    listing = cli("ls", "-w", "s3://ctstore/prefix", env=s3_server).stdout
    assert cs["fingerprint"] in listing


@pytest.mark.slow
def test_real_cluster_on_s3_survives_a_killed_worker(tmp_path, s3_server):
    """count on `dask scheduler` + 2 `dask worker`s with an S3 workspace; SIGKILL one worker mid-count."""
    import glob
    import signal

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, **s3_server, "TMPDIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--dashboard-address", ":0"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    workers = []
    try:
        time.sleep(2)
        for _ in range(2):
            workers.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                             "--nthreads", "1", "--memory-limit", "1GB", "--no-nanny",
                                             "--host", "127.0.0.1"], env=env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ws = "s3://ctstore/cluster"
        tokens = json.loads(cli("synth", "--vocab", "20000", "--tokens", "4M", "--shard-tokens", "256K", "-w", ws,
                                "--json", env=env).stdout)
        cmd = [sys.executable, "-m", "ctstore.cli", "count", tokens["fingerprint"], "-w", ws, "--lags", "4",
               "--scheduler", address, "--json", "-q"]
        count = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.time() + 120
        while time.time() < deadline and not [d for d in glob.glob(f"{tmp_path}/ctstore-scratch/counts-*/map-*")
                                              if ".partial" not in d]:
            time.sleep(0.05)
        os.kill(workers[0].pid, signal.SIGKILL)
        out, err = count.communicate(timeout=600)
        assert count.returncode == 0, err
        remote = json.loads(out)
    finally:
        for p in procs + workers:
            if p.poll() is None:
                p.kill()
        for p in procs + workers:
            p.wait(timeout=30)
    local_ws = str(tmp_path / "local")
    json.loads(cli("synth", "--vocab", "20000", "--tokens", "4M", "--shard-tokens", "256K", "-w", local_ws,
                   "--json").stdout)
    local = json.loads(cli("count", tokens["fingerprint"], "-w", local_ws, "--lags", "4", "--scheduler", "sync",
                           "--json").stdout)
    assert remote["fingerprint"] == local["fingerprint"] and remote["nnz"] == local["nnz"]
    options = {"endpoint_url": s3_server["FSSPEC_S3_ENDPOINT_URL"], "key": "test", "secret": "test"}
    a = CountStore(remote["path"] + "/counts.zarr", options)
    b = CountStore(local["path"] + "/counts.zarr")
    for lag in (1, 4):
        assert (a.matrix(lag) != b.matrix(lag)).nnz == 0
    assert np.array_equal(a.unigram, b.unigram)


def test_disk_full_during_k0_fails_cleanly_and_workspace_stays_usable(tmp_path, tiny_disk):
    subprocess.run(["mount", "-o", "remount,size=60M", str(tiny_disk)], check=True)
    ws = str(tiny_disk / "ws")
    tokens = json.loads(cli("synth", "--vocab", "20000", "--tokens", "600K", "-w", ws, "--json").stdout)
    counts = json.loads(cli("count", tokens["fingerprint"], "-w", ws, "--lags", "4", "--scheduler", "sync",
                            "--json").stdout)
    ballast = tiny_disk / "ballast"
    with open(ballast, "wb") as f:  # fill the disk, leaving a few kilobytes
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass
    proc = cli("k0", counts["fingerprint"], "-w", ws, "--kernel", "none", "--dim", "16", "--scheduler", "sync",
               "-q", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("ctstore: error:"), proc.stderr
    assert proc.stderr.count("\n") == 1
    assert Workspace(ws).list("embeddings") == []
    ballast.unlink()
    emb = json.loads(cli("k0", counts["fingerprint"], "-w", ws, "--kernel", "none", "--dim", "16",
                         "--scheduler", "sync", "--json").stdout)
    assert emb["dim"] == 16 and cli("verify", counts["fingerprint"], "-w", ws).returncode == 0


@pytest.mark.slow
def test_ctrl_c_stops_the_cluster_and_publishes_nothing(tmp_path):
    import glob
    import signal

    import psutil

    ws = str(tmp_path / "ws")
    tokens = json.loads(cli("synth", "--vocab", "50000", "--tokens", "8M", "--shard-tokens", "512K", "-w", ws,
                            "--json").stdout)
    cmd = [sys.executable, "-m", "ctstore.cli", "count", tokens["fingerprint"], "-w", ws, "--lags", "10",
           "--memory", "2GB", "--spill", "-q"]  # --spill: this corpus would fit one in-process pass
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CTSTORE_NO_PROGRESS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not [d for d in glob.glob(f"{ws}/tmp/counts-*/map-*") if ".partial" not in d]:
        time.sleep(0.05)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "a LocalCluster has worker processes"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, "every worker process stopped"
    assert Workspace(ws).list("counts") == []
    rerun = json.loads(cli("count", tokens["fingerprint"], "-w", ws, "--lags", "10", "--memory", "2GB",
                           "--json").stdout)
    assert rerun["tokens"] == 8_000_000
