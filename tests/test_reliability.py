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
from ctstore.errors import CtstoreError
from ctstore.count import CountParams, count_cooccurrences
from ctstore.formats.counts import CountStore
from ctstore.integrity import verify_artifact
from ctstore.testing import free_port
from ctstore.testing import s3_server as s3_server_at
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


_HOLDERS = """
import os, sys, time
from ctstore.workspace import Workspace
ws, log = Workspace(sys.argv[1]), sys.argv[2]
for _ in range(int(sys.argv[3])):
    with ws.lock("counts", "same"):
        with open(log, "a") as f:
            f.write(f"in {os.getpid()}\\n")
        time.sleep(0.002)
        with open(log, "a") as f:
            f.write(f"out {os.getpid()}\\n")
"""


def test_artifact_lock_excludes_under_contention(tmp_path):
    """Six processes taking one lock 40 times each: no two ever inside at once.

    The lock file used to be created empty and filled in a second step; a
    waiter reading it in between took it for a dead owner's, removed it and
    built the same artifact twice (seen in CI).
    """
    log = tmp_path / "log"
    procs = [subprocess.Popen([sys.executable, "-c", _HOLDERS, str(tmp_path / "ws"), str(log), "40"])
             for _ in range(6)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    lines = log.read_text().split("\n")[:-1]
    assert len(lines) == 6 * 40 * 2
    for enter, leave in zip(lines[::2], lines[1::2]):
        assert enter.startswith("in ") and leave == "out " + enter[3:], (enter, leave)


def test_lock_is_held_whatever_its_file_says_and_freed_when_its_holder_dies(tmp_path):
    ws = Workspace(str(tmp_path / "ws"))
    holder = subprocess.Popen([sys.executable, "-c", _HOLDERS.replace("time.sleep(0.002)", "time.sleep(60)"),
                               ws.root, str(tmp_path / "log"), "1"])
    while not (tmp_path / "log").exists():
        time.sleep(0.05)
    assert ws._locked("counts", "same")
    # the moment between creating a lock file and writing the owner's pid into it
    open(ws._lock_path("counts", "same"), "w").close()
    assert ws._locked("counts", "same"), "an empty lock file was taken for a dead owner's"
    with pytest.raises(CtstoreError, match="still locked"):
        with ws.lock("counts", "same", timeout=0.5):
            pass
    holder.kill()
    holder.wait()
    assert not ws._locked("counts", "same")
    with ws.lock("counts", "same", timeout=0.5):  # free at once: no waiting for a stale lock to age
        assert ws._locked("counts", "same")
    assert not ws._locked("counts", "same")


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


@pytest.fixture(scope="module")
def s3_server():
    with s3_server_at("ctstore", process=True) as endpoint:
        yield {"FSSPEC_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_DEFAULT_REGION": "us-east-1"}


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
    import signal

    port = free_port()
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
        import s3fs  # scratch of an S3 workspace lives on S3 (issue 16): wait for a finished map piece there

        fs = s3fs.S3FileSystem(endpoint_url=s3_server["FSSPEC_S3_ENDPOINT_URL"], key="test", secret="test",
                               skip_instance_cache=True)
        while time.time() < deadline and count.poll() is None and \
                not fs.glob("ctstore/cluster/tmp/counts-*/map-*/_complete"):
            fs.invalidate_cache()
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


def options_only_env(s3_server, tmp_path) -> dict:
    """An environment where the S3 endpoint and credentials exist only in ``CTSTORE_STORAGE_OPTIONS``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
    options = {"endpoint_url": s3_server["FSSPEC_S3_ENDPOINT_URL"], "key": "test", "secret": "test",
               "client_kwargs": {"region_name": "us-east-1"}}
    return {**env, "CTSTORE_STORAGE_OPTIONS": json.dumps(options), "CTSTORE_NO_PROGRESS": "1",
            "TMPDIR": str(tmp_path)}


def cli_in(env: dict, *args) -> dict:
    """Run the CLI with exactly ``env`` (nothing inherited) and return its --json output."""
    proc = subprocess.run([sys.executable, "-m", "ctstore.cli", *args, "--json"], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_storage_options_alone_reach_every_count_task_on_a_local_cluster(tmp_path, s3_server):
    """No AWS_* or FSSPEC_* variable anywhere: workers reach S3 only through the options they are handed."""
    import pyarrow.parquet as pq
    import s3fs

    from conftest import naive_counts

    env = options_only_env(s3_server, tmp_path)
    corpus = tmp_path / "c.txt"
    corpus.write_text((SAMPLE / "tinyshakespeare.txt").read_text()[:600_000])  # 3 batches of text: 3 shards
    ws = "s3://ctstore/options-only"
    tokens = cli_in(env, "tokenize", str(corpus), "--shard-tokens", "10K", "-w", ws)
    assert len(tokens["shards"]) >= 3
    counts = cli_in(env, "count", tokens["fingerprint"], "-w", ws, "--lags", "3", "--scheduler", "local",
                    "--memory", "2GB", "--spill")
    assert counts["mode"] == "map-reduce" and counts["map_tasks"] >= 3
    options = json.loads(env["CTSTORE_STORAGE_OPTIONS"])
    fs = s3fs.S3FileSystem(**options)
    docs = []  # the documents, read with pyarrow straight from S3: an independent reader
    for shard in tokens["shards"]:
        with fs.open(f"{tokens['path'][len('s3://'):]}/{shard['name']}", "rb") as f:
            docs += pq.read_table(f, columns=["tokens"]).column("tokens").to_pylist()
    assert sum(map(len, docs)) == tokens["tokens"] > 20_000
    store = CountStore(counts["path"] + "/counts.zarr", options)
    for lag in (1, 2, 3):
        m = store.matrix(lag).tocoo()
        assert {(int(a), int(b)): int(x) for a, b, x in zip(m.row, m.col, m.data)} == naive_counts(docs, lag)
    assert np.array_equal(store.unigram, np.bincount(np.concatenate(docs), minlength=tokens["n_vocab"]))


def test_disk_full_during_k0_fails_cleanly_and_workspace_stays_usable(tmp_path, tiny_disk):
    subprocess.run(["mount", "-o", "remount,size=60M", str(tiny_disk)], check=True)
    ws = str(tiny_disk / "ws")
    tokens = json.loads(cli("synth", "--vocab", "20000", "--tokens", "600K", "-w", ws, "--json").stdout)
    counts = json.loads(cli("count", tokens["fingerprint"], "-w", ws, "--lags", "4", "--scheduler", "sync",
                            "--json").stdout)
    ballast = tiny_disk / "ballast"
    with open(ballast, "wb", buffering=0) as f:  # fill the disk, leaving a few kilobytes (unbuffered: close()
        # has nothing left to flush onto the full disk, whatever the free space's alignment)
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


def _count_until_a_map_piece(tmp_path, vocab: str, tokens: str, shard: str, lags: str, finished: bool, **popen):
    """Start ``count --spill`` on a synthetic corpus in its own process; return once a map piece has started
    (``finished=False``) or is complete (``finished=True``)."""
    import glob

    ws = str(tmp_path / "ws")
    made = json.loads(cli("synth", "--vocab", vocab, "--tokens", tokens, "--shard-tokens", shard, "-w", ws,
                          "--json").stdout)
    cmd = [sys.executable, "-m", "ctstore.cli", "count", made["fingerprint"], "-w", ws, "--lags", lags,
           "--memory", "2GB", "--spill", "-q"]  # --spill: these corpora would fit one in-process pass
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CTSTORE_NO_PROGRESS": "1"}, **popen)
    deadline = time.time() + 180
    while time.time() < deadline and not [d for d in glob.glob(f"{ws}/tmp/counts-*/map-*")
                                          if not finished or ".partial" not in d]:
        time.sleep(0.05)
    return proc, ws, made


@pytest.mark.slow
def test_ctrl_c_stops_the_cluster_and_publishes_nothing(tmp_path):
    import signal

    import psutil

    proc, ws, tokens = _count_until_a_map_piece(tmp_path, "50000", "8M", "512K", "10", finished=True)
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


# ---------------------------------------------------------------------------------------
# issue 10: torn SFT checkpoints


def _tiny_run_inputs(ws):
    """A random tiny model artifact and a matching tokens artifact, built without count/k0."""
    import torch

    from conftest import write_tokens
    from ctstore.formats.model import save_model
    from ctstore.model import PhotonicGPT, get_config
    from ctstore.stage import fingerprint

    rng = np.random.default_rng(0)
    tokens = write_tokens(ws, [list(rng.integers(0, 100, 40)) for _ in range(120)], n_vocab=100,
                          row_group_tokens=4096, shard_tokens=1 << 20)
    torch.manual_seed(0)
    model = PhotonicGPT(get_config("tiny", vocab_size=100))
    fp = fingerprint("model", 1, {"test": "tiny-random"}, {})
    path = ws.prepare("model", fp)
    save_model(model, path, None, {"tokenizer": "test", "init": "random"})
    return ws.publish("model", fp, {"format_version": 1, "params": {}, "inputs": {}, "tokenizer": "test",
                                    "init": "random"}), tokens


def _weights(run):
    from ctstore.formats.model import load_model

    return load_model(f"{run.path}/model")[0].state_dict()


def test_sft_killed_at_any_checkpoint_rename_resumes_to_the_uninterrupted_model(tmp_path, monkeypatch):
    """A kill right after each rename of the checkpoint files (old layout: between its two renames)."""
    import torch

    from ctstore.sft import SftParams, train_model

    params = SftParams(steps=6, eval_every=2, eval_tokens=64, batch_size=4, block_size=16, seed=5, warmup=2)
    straight_ws = Workspace(str(tmp_path / "straight"))
    straight = _weights(train_model(*_tiny_run_inputs(straight_ws), straight_ws, params=params))
    real_replace = os.replace
    for kill_after in (3, 1, 2):  # 3: old layout, after the first rename of the second checkpoint
        ws = Workspace(str(tmp_path / f"killed{kill_after}"))
        model, tokens = _tiny_run_inputs(ws)
        renames = []

        def replace(src, dst, *, _n=kill_after, _seen=renames):
            real_replace(src, dst)
            if os.path.basename(str(dst)).startswith("checkpoint"):
                _seen.append(dst)
                if len(_seen) == _n:
                    raise KeyboardInterrupt  # as SIGKILL: nothing after this rename runs

        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(KeyboardInterrupt):
            train_model(model, tokens, ws, params=params)
        monkeypatch.setattr(os, "replace", real_replace)
        assert ws.list("run") == []
        resumed = train_model(model, tokens, ws, params=params)
        assert resumed.manifest["steps"] == 6
        got = _weights(resumed)
        for name, value in straight.items():
            assert torch.equal(value, got[name]), (kill_after, name)
        metrics = [json.loads(x)["step"] for x in open(f"{resumed.path}/metrics.jsonl")]
        assert metrics == sorted(set(metrics)) and metrics[0] == 0 and metrics[-1] == 6, metrics
        assert verify_artifact(resumed) == []


def test_stale_legacy_checkpoint_json_beside_newer_weights_is_not_trusted(tmp_path):
    """The old two-file layout torn by a kill: step-2 tensors beside a step-1 checkpoint.json."""
    import torch
    from safetensors.torch import load_file, save_file

    from ctstore.sft import SftParams, train_model

    from safetensors import safe_open

    params = SftParams(steps=4, eval_every=2, eval_tokens=64, batch_size=4, block_size=16, seed=1, warmup=2)
    straight_ws = Workspace(str(tmp_path / "straight"))
    straight = _weights(train_model(*_tiny_run_inputs(straight_ws), straight_ws, params=params))
    ws = Workspace(str(tmp_path / "torn"))
    model, tokens = _tiny_run_inputs(ws)
    with pytest.raises(KeyboardInterrupt):
        train_model(model, tokens, ws, params=params, _stop_at=2)
    [run_fp] = os.listdir(f"{ws.root}/run")
    run_dir = ws.artifact_path("run", run_fp)
    ck = os.path.join(run_dir, "checkpoint.safetensors")
    tensors = load_file(ck)
    assert {int(v) for k, v in tensors.items() if k.endswith(".step")} == {2}
    with safe_open(ck, framework="pt") as f:
        header = f.metadata() or {}
    if "ctstore.sft_state" in header:
        state = json.loads(header["ctstore.sft_state"])
    else:  # written in the old layout already (the code before issue 10)
        state = json.load(open(os.path.join(run_dir, "checkpoint.json")))
    # rewrite in the old layout: tensors of step 2, no state in the header, a checkpoint.json that
    # says step 1 (what a kill between the old layout's two renames left behind)
    save_file(tensors, ck)
    with open(os.path.join(run_dir, "checkpoint.json"), "w") as f:
        json.dump({**state, "step": 1}, f)
    resumed = train_model(model, tokens, ws, params=params)
    got = _weights(resumed)
    for name, value in straight.items():
        assert torch.equal(value, got[name]), name


# ---------------------------------------------------------------------------------------
# issue 10: a missing Zarr chunk must not read as zeros


def test_missing_count_chunk_fails_k0_with_one_line_and_publishes_nothing(ws, small_counts):
    store = CountStore.from_artifact(small_counts)
    chunk_len = store.group["lag_3/indices"].chunks[0]
    reference, other_lag = store.matrix(3), store.matrix(2)
    listed = sorted(k for k in small_counts.manifest["files"] if k.startswith("counts.zarr/lag_3/indices/c/"))
    assert listed, "the manifest lists the chunks of lag_3/indices"
    victim = listed[-1]  # lag_3/indices/c/1 on a store of more than one chunk, else c/0
    index = int(victim.rsplit("/", 1)[1])
    os.remove(os.path.join(small_counts.path, victim))
    # the naive reading (what zarr does by itself) silently differs from the stored matrix
    import zarr

    raw = zarr.open_array(os.path.join(small_counts.path, "counts.zarr", "lag_3", "indices"), mode="r")[:]
    assert (raw[index * chunk_len:] == 0).all() and not np.array_equal(raw, reference.indices)
    with pytest.raises(CtstoreError, match=rf"array lag_3/indices, chunk {index} is missing"):
        CountStore.from_artifact(small_counts).matrix(3)
    with pytest.raises(CtstoreError, match=rf"chunk {index} is missing"):  # a task's store, from its URL only
        CountStore(store.url).row_block(3, 0, store.n_vocab)
    assert (CountStore.from_artifact(small_counts).matrix(2) != other_lag).nnz == 0, "other lags still read"
    proc = cli("k0", small_counts.fingerprint, "-w", ws.root, "--dim", "8", "--v-eff", "256", "--scheduler", "sync",
               "-q", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("ctstore: error:"), proc.stderr
    assert proc.stderr.count("\n") == 1 and f"lag_3/indices, chunk {index} is missing" in proc.stderr
    assert ws.list("embeddings") == [] and not os.listdir(f"{ws.root}/embeddings")
    problems = verify_artifact(small_counts)
    assert problems == [f"{small_counts}: array counts.zarr/lag_3/indices, chunk {index} is missing"]
    assert cli("verify", small_counts.fingerprint, "-w", ws.root, check=False).returncode == 1


def test_chunk_absent_by_design_still_reads_as_fill_value(ws):
    """Arrays are written without all-zero chunks: absence of an unlisted chunk is not damage."""
    from conftest import write_tokens

    # tokens 0..9 and 2_000_000.. only: the unigram chunk covering ids 2^20..2^21-1 is all zero, never written
    docs = [[1, 2, 3, 2_100_000, 5] * 4, [7, 8, 2_100_001, 9] * 3]
    tokens = write_tokens(ws, docs, n_vocab=2_200_000)
    counts = count_cooccurrences(tokens, ws, params=CountParams(lags=1), scheduler="sync")
    assert "counts.zarr/unigram/c/1" not in counts.manifest["files"]
    assert not os.path.exists(os.path.join(counts.path, "counts.zarr", "unigram", "c", "1"))
    unigram = CountStore.from_artifact(counts).unigram
    expected = np.bincount(np.concatenate(docs), minlength=2_200_000)
    assert np.array_equal(unigram, expected)


def test_missing_embeddings_chunk_fails_seed_with_one_line(ws, small_counts, capsys):
    from ctstore.cli import main

    emb = json.loads(_main_json(capsys, ["k0", small_counts.fingerprint, "-w", ws.root, "--dim", "64", "--v-eff",
                                         "512", "--scheduler", "sync"]))
    # a damaged input: verify of the embeddings names it (they were computed from it); --shallow does not look
    os.remove(os.path.join(small_counts.path, "counts.zarr", "lag_1", "indices", "c", "0"))
    assert main(["verify", emb["fingerprint"], "-w", ws.root, "-q"]) == 1
    err = capsys.readouterr().err
    assert f"input {small_counts}: array counts.zarr/lag_1/indices, chunk 0 is missing" in err, err
    assert main(["verify", emb["fingerprint"], "-w", ws.root, "--shallow", "-q"]) == 0
    os.remove(os.path.join(emb["path"], "embeddings.zarr", "E", "c", "0", "0"))
    capsys.readouterr()
    assert main(["seed", emb["fingerprint"], "-w", ws.root, "--config", "tiny", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "array E, chunk 0,0 is missing" in err, err
    assert ws.list("model") == []


# ---------------------------------------------------------------------------------------
# issue 10: gc and the scratch of running jobs; full disks during seed and sft


def test_gc_during_sft_token_cache_build_leaves_it_alone(tmp_path, monkeypatch):
    from ctstore.sft import data as sft_data
    from ctstore.sft import SftParams, train_model

    ws = Workspace(str(tmp_path / "ws"))
    model, tokens = _tiny_run_inputs(ws)
    real = sft_data.in_validation
    removed = []

    def in_validation_then_gc(doc_ids, fraction):  # called while the cache files are being written
        removed.extend(Workspace(ws.root).gc())
        return real(doc_ids, fraction)

    monkeypatch.setattr(sft_data, "in_validation", in_validation_then_gc)
    run = train_model(model, tokens, ws, params=SftParams(steps=2, eval_every=2, eval_tokens=64, batch_size=2,
                                                          block_size=8))
    assert removed == [], removed
    assert run.manifest["steps"] == 2
    cache = os.path.join(ws.root, "tmp", f"tokens-{tokens.fingerprint}-val0.1")
    train = np.fromfile(os.path.join(cache, "train.u32"), dtype=np.uint32)
    val = np.fromfile(os.path.join(cache, "val.u32"), dtype=np.uint32)
    assert train.size + val.size == tokens.manifest["tokens"] and val.size > 0
    assert any(p.endswith(f"tokens-{tokens.fingerprint}-val0.1") for p in Workspace(ws.root).gc()), \
        "once no job holds it, the cache is ordinary scratch again"


def _fill(disk, leave: int = 0):
    """Fill ``disk`` with a ballast file, leaving about ``leave`` bytes."""
    ballast = disk / "ballast"
    with open(ballast, "wb") as f:
        try:
            while True:
                free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
                if free <= leave:
                    break
                f.write(b"\0" * max(4096, min(1 << 20, free - leave)))
                f.flush()
        except OSError:
            pass
    return ballast


def _leftovers(ws_root: str, kind: str) -> list[str]:
    out = []
    for sub in (kind, "tmp"):
        d = os.path.join(ws_root, sub)
        if os.path.isdir(d):
            out += [os.path.join(d, x) for x in os.listdir(d)]
    return out


def test_disk_full_during_seed_and_sft_fails_in_one_line_and_leaves_nothing(tiny_disk, capsys):
    from ctstore.cli import main
    from ctstore.embed import K0Params, embed_counts
    from conftest import write_tokens

    subprocess.run(["mount", "-o", "remount,size=16M", str(tiny_disk)], check=True)
    ws = Workspace(str(tiny_disk / "ws"))
    rng = np.random.default_rng(1)
    tokens = write_tokens(ws, [list(rng.integers(0, 100, 40)) for _ in range(60)], n_vocab=100,
                          row_group_tokens=4096, shard_tokens=1 << 20)
    counts = count_cooccurrences(tokens, ws, params=CountParams(lags=2), scheduler="sync")
    emb = embed_counts(counts, ws, params=K0Params(dim=64, v_eff=100), scheduler="sync")
    ballast = _fill(tiny_disk, leave=64 << 10)  # a tiny model needs ~0.5 MB
    for argv, kind in ((["seed", emb.fingerprint, "--config", "tiny"], "model"),):
        capsys.readouterr()
        rc = main([*argv, "-w", ws.root, "-q"])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("ctstore: error:") and err.count("\n") == 1, err
        assert "cannot write" in err and "free on that disk" in err and str(tiny_disk) in err, err
        assert ws.list(kind) == [] and _leftovers(ws.root, kind) == [], _leftovers(ws.root, kind)
    ballast.unlink()
    model = json.loads(_main_json(capsys, ["seed", emb.fingerprint, "--config", "tiny", "-w", ws.root]))
    # sft: room for the two locks only (not the token cache), then for the cache but not the checkpoint
    for leave, what in ((8 << 10, "SFT token cache"), (48 << 10, "SFT checkpoint")):
        ballast = _fill(tiny_disk, leave=leave)
        capsys.readouterr()
        rc = main(["sft", model["fingerprint"], "--tokens", tokens.fingerprint, "--steps", "2", "--eval-every",
                   "1", "--eval-tokens", "64", "--batch-size", "2", "--block-size", "8", "-w", ws.root, "-q"])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and f"cannot write {what}" in err, err
        assert "free on that disk" in err and str(tiny_disk) in err, err
        assert ws.list("run") == [] and [p for p in _leftovers(ws.root, "run") if "/tokens-" not in p] == []
        ballast.unlink()
    run = json.loads(_main_json(capsys, ["sft", model["fingerprint"], "--tokens", tokens.fingerprint, "--steps", "2",
                                         "--eval-every", "1", "--eval-tokens", "64", "--batch-size", "2",
                                         "--block-size", "8", "-w", ws.root]))
    assert run["steps"] == 2 and verify_artifact(ws.get(run["fingerprint"])) == []


def _main_json(capsys, argv):
    from ctstore.cli import main

    capsys.readouterr()
    assert main([*argv, "--json", "-q"]) == 0
    return capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# issue 10: k0 gives the same bits on every scheduler


@pytest.mark.slow
def test_k0_is_bit_identical_in_process_and_on_a_local_cluster(ws, small_counts, monkeypatch):
    """Many operator blocks (so sums have many terms to reorder); sync vs a 2-worker LocalCluster."""
    from ctstore.embed import blocks as operator_module
    from ctstore.embed import K0Params, embed_counts, load_embeddings

    real = operator_module.plan_row_blocks_by_nnz
    monkeypatch.setattr(operator_module, "plan_row_blocks_by_nnz", lambda row_nnz, target: real(row_nnz, 1500))
    cases = [K0Params(dim=8, v_eff=1024),  # circulant exact: diagonal sums folded over tasks
             # randomized SVD of PPMI: operator column sums, then Aᵀ·Q partial sums folded over tasks
             K0Params(dim=8, v_eff=1024, kernel="ppmi", power_iters=1, weighting="inverse-distance")]
    for params in cases:
        sync = embed_counts(small_counts, ws, params=params, scheduler="sync")
        e_sync, s_sync, _, _ = load_embeddings(sync)
        local = embed_counts(small_counts, ws, params=params, scheduler="local", memory="2GB", force=True)
        e_local, s_local, _, _ = load_embeddings(local)
        assert local.fingerprint == sync.fingerprint
        assert np.abs(e_sync).max() > 0 and np.isfinite(e_sync).all()
        assert np.array_equal(s_sync, s_local), (params, s_sync - s_local)
        assert np.array_equal(e_sync, e_local), (params, np.abs(e_sync - e_local).max())


@pytest.mark.slow
def test_map_reduce_folds_in_item_order_whatever_order_tasks_finish():
    from ctstore.cluster import Runner

    with Runner("2GB", "local", n_workers=2, dashboard="127.0.0.1:0") as runner:
        runner.plan = type(runner.plan)(runner.plan.memory, 1, runner.plan.worker_memory, runner.plan.task_memory)
        order = runner.map_reduce(_sleep_then_return, [(i, 0.3 if i % 3 == 0 else 0.0) for i in range(12)],
                                  lambda acc, x: (acc or []) + [x], desc="t")
    assert order == list(range(12))


def _sleep_then_return(i, seconds):
    time.sleep(seconds)
    return i


@pytest.mark.slow
def test_k0_reaches_s3_with_options_only_from_ctstore_storage_options(tmp_path, s3_server):
    """k0 on a LocalCluster reads counts on S3 whose endpoint and keys come only from CTSTORE_STORAGE_OPTIONS:
    the worker processes get them with the task (no FSSPEC_/AWS_ variables anywhere)."""
    import fsspec

    local = str(tmp_path / "ws")
    tokens = json.loads(cli("synth", "--vocab", "2000", "--tokens", "200K", "-w", local, "--json").stdout)
    counts = json.loads(cli("count", tokens["fingerprint"], "-w", local, "--lags", "2", "--scheduler", "sync",
                            "--json").stdout)
    options = {"endpoint_url": s3_server["FSSPEC_S3_ENDPOINT_URL"], "key": "test", "secret": "test"}
    fsspec.filesystem("s3", **options).put(counts["path"], f"ctstore/options-only/counts/{counts['fingerprint']}",
                                          recursive=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSSPEC_", "AWS_"))}
    env.update(CTSTORE_NO_PROGRESS="1", CTSTORE_STORAGE_OPTIONS=json.dumps(options))
    k0 = [sys.executable, "-m", "ctstore.cli", "k0", counts["fingerprint"], "--dim", "8", "--v-eff", "512", "--json",
          "-q"]
    remote = subprocess.run([*k0, "-w", "s3://ctstore/options-only", "--scheduler", "local", "--memory", "2GB"],
                            capture_output=True, text=True, env=env)
    assert remote.returncode == 0, remote.stderr
    here = json.loads(cli("k0", counts["fingerprint"], "--dim", "8", "--v-eff", "512", "--scheduler", "sync",
                          "-w", local, "--json").stdout)
    there = json.loads(remote.stdout)
    assert there["fingerprint"] == here["fingerprint"] and there["spectrum_head"] == here["spectrum_head"]
    assert there["path"].startswith("s3://ctstore/options-only/embeddings/")
    verify = subprocess.run([sys.executable, "-m", "ctstore.cli", "verify", there["fingerprint"], "-w",
                             "s3://ctstore/options-only"], capture_output=True, text=True, env=env)
    assert verify.returncode == 0, verify.stderr


# ---------------------------------------------------------------------------------------
# issue 20: never read, hash or delete outside the workspace; no hangs; no silent wrong runs


def _main(capsys, *args) -> tuple[int, str]:
    """Run the CLI in-process; returns (status, stdout + stderr) and checks the error form when it fails."""
    from ctstore.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    err = captured.err
    if rc == 2:
        lines = [line for line in err.splitlines() if line.startswith("ctstore: error:")]
        assert len(lines) == 1 and "Traceback" not in err, err
    return rc, captured.out + err


class _Hung(Exception):
    pass


@pytest.fixture
def deadline():
    """``with deadline(s):`` fails the test with _Hung after ``s`` seconds (a hang used to block forever)."""
    import contextlib
    import signal

    @contextlib.contextmanager
    def within(seconds: int):
        def expire(*_):
            raise _Hung(f"still running after {seconds} s")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.alarm(seconds)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)

    return within


def _edit_manifest(artifact, edit) -> None:
    path = os.path.join(artifact.path, "manifest.json")
    manifest = json.load(open(path))
    edit(manifest)
    with open(path, "w") as f:
        json.dump(manifest, f)


def _hashed_tokens(ws, docs, n_vocab=40):
    """A tokens artifact holding ``docs`` whose manifest records file hashes, as a real stage writes it."""
    from conftest import write_tokens
    from ctstore.integrity import hash_files

    art = write_tokens(ws, docs, n_vocab=n_vocab)
    body = {k: v for k, v in art.manifest.items() if k not in ("kind", "fingerprint", "created", "path")}
    return ws.publish("tokens", art.fingerprint, {**body, "files": hash_files(art.location)})


@pytest.fixture
def tiny_tokens(ws):
    rng = np.random.default_rng(3)
    return _hashed_tokens(ws, [list(rng.integers(0, 40, 30)) for _ in range(20)])


@pytest.fixture
def outside(tmp_path):
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret.txt").write_text("attacker-chosen secret")
    return d


def test_files_key_outside_the_artifact_is_an_unreadable_manifest_not_an_oracle(ws, tiny_tokens, outside, capsys):
    _edit_manifest(tiny_tokens, lambda m: m["files"].update({"../../../outside/secret.txt": "00" * 16 + ":22"}))
    rc, err = _main(capsys, "verify", tiny_tokens.fingerprint, "-w", ws.root)
    assert rc == 2 and "manifest is invalid: files key '../../../outside/secret.txt'" in err
    assert "22 bytes" not in err and "bytes, expected" not in err
    rc, err = _main(capsys, "ls", "-w", ws.root)
    assert rc == 0 and "UNREADABLE" in err


def test_shard_name_outside_the_artifact_is_never_counted(ws, tiny_tokens, outside, capsys):
    import shutil

    shutil.copy(os.path.join(tiny_tokens.path, tiny_tokens.manifest["shards"][0]["name"]), outside / "x.parquet")
    _edit_manifest(tiny_tokens, lambda m: m["shards"][0].update(name="../../../outside/x.parquet"))
    rc, err = _main(capsys, "count", tiny_tokens.fingerprint, "-w", ws.root, "--lags", "2", "--scheduler", "sync")
    assert rc == 2 and "shards[0].name" in err and ws.list("counts") == []


def test_inputs_that_are_paths_are_never_followed(ws, tiny_tokens, outside, capsys):
    _edit_manifest(tiny_tokens, lambda m: m.update(inputs={"tokens": "../../outside/evil00"}))
    rc, err = _main(capsys, "verify", tiny_tokens.fingerprint, "-w", ws.root)
    assert rc == 2 and "inputs.tokens is not a fingerprint" in err
    # an embeddings artifact whose counts input is an absolute directory: seed refuses before reading it
    fp = "e" * 20
    os.makedirs(os.path.join(ws.root, "embeddings", fp))
    with open(os.path.join(ws.root, "embeddings", fp, "manifest.json"), "w") as f:
        json.dump({"kind": "embeddings", "fingerprint": fp, "format_version": 1, "inputs": {"counts": str(outside)}}, f)
    rc, err = _main(capsys, "seed", fp, "-w", ws.root)
    assert rc == 2 and "inputs.counts is not a fingerprint" in err and ws.list("model") == []


@pytest.mark.parametrize("ref", ["{outside}", "{ws}/tokens/{fp}", "../tokens/{fp}", "tokens/../{fp}", "x/{fp}"])
def test_get_never_accepts_a_path(ws, tiny_tokens, outside, ref):
    ref = ref.format(outside=outside, ws=ws.root, fp=tiny_tokens.fingerprint)
    with pytest.raises(CtstoreError, match="paths are not accepted|not a fingerprint"):
        ws.get(ref)
    assert ws.get(f"tokens/{tiny_tokens.fingerprint[:6]}") == ws.get(tiny_tokens.fingerprint)


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=3), max_leaves=6)
_FIELDS = ["files", "created", "inputs", "shards", "final_val_ppl", "n_vocab", "tokens", "params", "tokenizer"]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(_FIELDS), value=_JSON | st.sampled_from(
    ["yesterday", "../../x", "/etc/passwd", "abc", {"a": "b"}, {"../x": "00:1"}, [{"name": "../p"}], "x"]))
def test_any_manifest_field_value_gives_a_listing_or_one_line(tmp_path_factory, capsys, field, value):
    """A hypothesis strategy over manifest fields: ls lists the other artifacts and reports this one on its own
    line; show/verify/count either work or fail in one line; nothing is read outside the artifact."""
    ws = Workspace(str(tmp_path_factory.mktemp("ws")))
    good = _hashed_tokens(ws, [[1, 2, 3, 4], [2, 3, 4, 5]], n_vocab=8)
    bad = _hashed_tokens(ws, [[1, 2, 3, 4, 5, 6]], n_vocab=8)
    _edit_manifest(bad, lambda m: m.update({field: value}))
    rc, listed = _main(capsys, "ls", "-w", ws.root)
    assert rc == 0 and good.fingerprint in listed and bad.fingerprint in listed, listed
    for command in (["show"], ["verify"], ["count", "--lags", "1", "--scheduler", "sync"]):
        rc, err = _main(capsys, command[0], bad.fingerprint, *command[1:], "-w", ws.root)
        assert rc in (0, 1, 2), err


def test_fifo_and_device_in_an_artifact_fail_in_one_line_within_seconds(ws, tiny_tokens, capsys, deadline):
    with deadline(60):
        _fifo_and_device(ws, tiny_tokens, capsys)


def _fifo_and_device(ws, tiny_tokens, capsys):
    shard = os.path.join(tiny_tokens.path, tiny_tokens.manifest["shards"][0]["name"])
    os.remove(shard)
    os.mkfifo(shard)
    t0 = time.monotonic()
    rc, err = _main(capsys, "verify", tiny_tokens.fingerprint, "-w", ws.root)
    assert rc == 1 and "is a FIFO, not a regular file" in err
    rc, err = _main(capsys, "count", tiny_tokens.fingerprint, "-w", ws.root, "--lags", "1", "--scheduler", "sync")
    assert rc == 2 and "is a FIFO" in err
    os.remove(shard)
    os.symlink("/dev/zero", shard)
    rc, err = _main(capsys, "verify", tiny_tokens.fingerprint, "-w", ws.root)
    assert rc == 1 and "symbolic link" in err
    rc, err = _main(capsys, "count", tiny_tokens.fingerprint, "-w", ws.root, "--lags", "1", "--scheduler", "sync")
    assert rc == 2 and "symbolic link" in err
    manifest = os.path.join(tiny_tokens.path, "manifest.json")
    os.remove(manifest)
    os.mkfifo(manifest)
    rc, err = _main(capsys, "ls", "-w", ws.root)
    assert rc == 0 and "not a regular file" in err
    assert time.monotonic() - t0 < 20


def test_gc_refuses_a_directory_without_the_workspace_marker(tmp_path, capsys):
    plain = tmp_path / "project"
    for sub in ("model/mine", "tmp/notes", "report/draft"):
        (plain / sub).mkdir(parents=True)
        (plain / sub / "keep.txt").write_text("user data")
    rc, err = _main(capsys, "gc", "-w", plain)
    assert rc == 2 and "not a ctstore workspace (no .ctstore-workspace marker)" in err and "touch " in err
    assert all((plain / sub / "keep.txt").exists() for sub in ("model/mine", "tmp/notes", "report/draft"))
    fresh = Workspace(str(tmp_path / "fresh"))  # a workspace ctstore creates is marked at once
    assert fresh.is_marked() and fresh.gc() == []
    (plain / ".ctstore-workspace").write_text("{}")  # the documented migration of an older workspace
    assert Workspace(str(plain)).gc(dry_run=True)


@pytest.mark.parametrize("link", ["tmp", "model", ".locks"])
def test_gc_never_follows_a_symlink_out_of_the_workspace(ws, tmp_path, tiny_tokens, link, capsys):
    shared = tmp_path / "shared"
    (shared / "sub").mkdir(parents=True)
    (shared / "a.txt").write_text("shared")
    (shared / "sub" / "b.txt").write_text("shared")
    (shared / "c.lock").write_text("x")
    target = os.path.join(ws.root, link)
    if os.path.isdir(target):
        os.rmdir(target)
    os.symlink(shared, target)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", os.path.join(ws.root, "tokens", "0" * 20))  # a link as an artifact dir
    rc, err = _main(capsys, "gc", "-w", ws.root)
    assert rc == 0 and "symbolic link leading out of the workspace" in err
    assert sorted(os.listdir(shared)) == ["a.txt", "c.lock", "sub"] and (shared / "sub" / "b.txt").exists()
    assert (tmp_path / "elsewhere").is_dir() and not os.path.lexists(os.path.join(ws.root, "tokens", "0" * 20))
    assert ws.list() == [tiny_tokens]


def test_fifo_in_locks_does_not_hang_gc(ws, tiny_tokens, deadline):
    with deadline(30):
        _fifo_in_locks(ws)


def _fifo_in_locks(ws):
    os.makedirs(os.path.join(ws.root, ".locks"), exist_ok=True)
    fifo = os.path.join(ws.root, ".locks", "counts-" + "1" * 20 + ".lock")
    os.mkfifo(fifo)
    t0 = time.monotonic()
    assert fifo in ws.gc() and not os.path.lexists(fifo)
    os.mkfifo(fifo)
    with pytest.raises(CtstoreError, match="lock file is not a regular file"):
        with ws.lock("counts", "1" * 20):
            pass
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("where", ["root", "parent", "inside"])
def test_export_force_never_replaces_a_workspace(tmp_path, capsys, where):
    ws = Workspace(str(tmp_path / "top" / "ws"))
    model, _ = _tiny_run_inputs(ws)
    target = {"root": ws.root, "parent": str(tmp_path / "top"), "inside": os.path.join(ws.root, "tokens")}[where]
    before = sorted(os.listdir(ws.root))
    rc, err = _main(capsys, "export", model.fingerprint, target, "--force", "-w", ws.root)
    assert rc == 2 and "workspace" in err
    assert sorted(os.listdir(ws.root)) == before and ws.list("model") == [model]
    other = Workspace(str(tmp_path / "other"))  # a workspace that is not the one exported from
    rc, err = _main(capsys, "export", model.fingerprint, str(tmp_path / "other"), "--force", "-w", ws.root)
    assert rc == 2 and "workspace" in err and other.is_marked()


def test_gc_removes_a_killed_exports_partial_directory(tmp_path, capsys, monkeypatch):
    ws = Workspace(str(tmp_path / "ws"))
    model, _ = _tiny_run_inputs(ws)
    out = tmp_path / "hf"

    def killed(*a, **k):
        raise SystemExit(137)  # as if killed while writing: nothing cleans up
    monkeypatch.setattr("safetensors.torch.save_file", killed)  # inside the export's temporary directory
    monkeypatch.setattr("ctstore.location._remove", lambda loc: None)
    # a kill runs no cleanup; only the kernel drops the process's lock (its record stays in tmp/)
    monkeypatch.setattr("ctstore.deletion.ExportRecord.__exit__", lambda self, *exc: self.lock.__exit__(*exc))
    with pytest.raises(SystemExit):
        _main(capsys, "export", model.fingerprint, out, "-w", ws.root)
    monkeypatch.undo()
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith("hf.partial-")]
    assert leftovers and not out.exists()
    removed = ws.gc()
    assert str(tmp_path / leftovers[0]) in removed and not os.path.exists(tmp_path / leftovers[0])
    assert sorted(os.listdir(tmp_path)) == ["ws"]


def test_a_partial_file_left_by_a_kill_is_never_hashed_into_a_published_artifact(ws):
    from ctstore.workspace import build_artifact

    def build(path):
        with open(os.path.join(path, "checkpoint.safetensors"), "wb") as f:
            f.write(b"complete")
        with open(os.path.join(path, "checkpoint.safetensors.partial-1a2b3c4d"), "wb") as f:
            f.write(b"torn")  # what a kill between write and rename leaves
        return {"params": {}, "inputs": {}}

    run, _ = build_artifact(ws, "run", "2" * 20, build)
    assert list(run.manifest["files"]) == ["checkpoint.safetensors"]
    assert os.listdir(run.path) == ["checkpoint.safetensors", "manifest.json"] or \
        sorted(os.listdir(run.path)) == ["checkpoint.safetensors", "manifest.json"]
    assert verify_artifact(run) == []


@pytest.fixture
def silent_servers():
    """A TCP server that accepts and never answers, and an HTTP server: neither is a Dask scheduler."""
    import http.server
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield {"silent": f"tcp://127.0.0.1:{silent.getsockname()[1]}", "http": f"tcp://127.0.0.1:{httpd.server_port}",
           "http-url": f"http://127.0.0.1:{httpd.server_port}", "garbage": "not an address"}
    httpd.shutdown()
    silent.close()


@pytest.mark.parametrize("which", ["silent", "http", "http-url", "garbage"])
def test_scheduler_that_never_answers_fails_in_one_line_within_seconds(ws, tiny_tokens, silent_servers, capsys,
                                                                        monkeypatch, which, deadline):
    monkeypatch.setattr("ctstore.cluster.HANDSHAKE_TIMEOUT", 2.0)
    t0 = time.monotonic()
    with deadline(60):
        rc, err = _main(capsys, "count", tiny_tokens.fingerprint, "-w", ws.root, "--lags", "1", "--scheduler",
                        silent_servers[which])
    assert rc == 2 and "--scheduler" in err and time.monotonic() - t0 < 15
    assert ws.list("counts") == []


def _sft(capsys, ws, model, tokens, *extra):
    return _main(capsys, "sft", model.fingerprint, "--tokens", tokens.fingerprint, "-w", ws.root, "--steps", "4",
                 "--eval-every", "2", "--batch-size", "2", "--device", "cpu", *extra)


def test_sft_with_a_huge_lr_stops_on_the_nonfinite_loss_and_publishes_nothing(ws, capsys):
    model, tokens = _tiny_run_inputs(ws)
    rc, err = _sft(capsys, ws, model, tokens, "--lr", "1e30")
    assert rc == 2 and "training diverged; nothing was published" in err
    assert ws.list("run") == []


def test_sft_batch_is_planned_against_memory_before_anything_is_allocated(ws, capsys, deadline):
    import resource

    model, tokens = _tiny_run_inputs(ws)
    t0, peak = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with deadline(20):
        rc, err = _sft(capsys, ws, model, tokens, "--batch-size", "100000000")
    assert rc == 2 and "sft --batch-size 100000000: one step" in err and "--memory 4GB" in err
    assert time.monotonic() - t0 < 10 and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 500_000
    assert ws.list("run") == [] and not os.listdir(os.path.join(ws.root, "run"))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_sft_on_cuda_without_a_gpu_is_one_line(ws, capsys):
    model, tokens = _tiny_run_inputs(ws)
    rc, err = _sft(capsys, ws, model, tokens, "--device", "cuda")
    assert rc == 2 and "--device cuda: no CUDA GPU" in err
    rc, err = _sft(capsys, ws, model, tokens, "--device", "quantum")
    assert rc == 2 and "not a torch device" in err


@pytest.mark.parametrize("fraction,empty", [("1e-9", "val"), ("0.999999999", "train")])
def test_sft_and_eval_on_an_empty_split_are_one_line(ws, capsys, fraction, empty):
    model, tokens = _tiny_run_inputs(ws)
    rc, err = _sft(capsys, ws, model, tokens, "--val-fraction", fraction)
    assert rc == 2 and f"the {empty} split of the documents" in err and "has 0 tokens" in err
    rc, err = _main(capsys, "eval", model.fingerprint, "--tokens", tokens.fingerprint, "-w", ws.root,
                    "--val-fraction", fraction, "--split", empty)
    assert rc == 2 and f"the {empty} split" in err


@pytest.mark.parametrize("flag,value", [("--max-new-tokens", "1000000000"), ("--max-new-tokens", "1e9"),
                                        ("-n", "100000000"), ("-n", "1e8")])
def test_generate_lengths_are_bounded(ws, capsys, flag, value):
    model, _ = _tiny_run_inputs(ws)
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        _main(capsys, "generate", model.fingerprint, "--prompt", "hi", flag, value, "-w", ws.root)
    err = capsys.readouterr().err
    name = {"-n": "--num-samples"}.get(flag, flag)
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith(f"ctstore: error: {name}: must be")
    assert time.monotonic() - t0 < 5


def test_tokenize_with_a_directory_as_encoding_is_one_line(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("hello world\n")
    (tmp_path / "enc").mkdir()
    rc, err = _main(capsys, "tokenize", tmp_path / "t.txt", "--encoding", f"{tmp_path / 'enc'}/",
                    "-w", tmp_path / "ws")
    assert rc == 2 and "encoding file is a directory" in err


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_kernel_is_refused_in_one_line(ws, tmp_path, capsys, bad):
    rng = np.random.default_rng(0)
    tokens = _hashed_tokens(ws, [list(rng.integers(0, 40, 200)) for _ in range(20)])
    rc, _ = _main(capsys, "count", tokens.fingerprint, "-w", ws.root, "--lags", "2", "--scheduler", "sync")
    assert rc == 0
    kernel = np.ones(16)
    kernel[3] = bad
    np.save(tmp_path / "k.npy", kernel)
    rc, err = _main(capsys, "k0", ws.list("counts")[0].fingerprint, "-w", ws.root, "--method", "fft2", "--kernel",
                    tmp_path / "k.npy", "--v-eff", "16", "--dim", "4", "--scheduler", "sync")
    assert rc == 2 and "kernel has a NaN or infinite value (row 3)" in err and ws.list("embeddings") == []


@pytest.mark.parametrize("options,problem", [
    ({"bogus_option": 1}, "storage option 'bogus_option' is not accepted"),
    ({"endpoint_url": "http://127.0.0.1:9", "key": "a", "secret": "b"}, "cannot reach the object store"),
    ({"endpoint_url": "http://127.0.0.1:9"}, "no credentials for the object store"),
])
def test_s3_workspace_that_cannot_be_reached_is_one_line_quickly(tmp_path, capsys, monkeypatch, options, problem,
                                                                 deadline):
    pytest.importorskip("s3fs")
    for name in list(os.environ):
        if name.startswith(("AWS_", "FSSPEC_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("CTSTORE_STORAGE_OPTIONS", json.dumps(options))
    t0 = time.monotonic()
    with deadline(60):
        rc, err = _main(capsys, "ls", "-w", "s3://ctstore-nobucket/ws")
    assert rc == 2 and problem in err and time.monotonic() - t0 < 15


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_prints_no_worker_tracebacks(tmp_path):
    """A terminal's Ctrl-C reaches every process of the group: workers must stay quiet, ctstore speaks last."""
    import signal

    proc, ws, _ = _count_until_a_map_piece(tmp_path, "20000", "4M", "256K", "8", finished=False,
                                            start_new_session=True)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and lines[-1].startswith("ctstore: interrupted"), err
    assert Workspace(ws).list("counts") == []


@pytest.mark.parametrize("field,value,problem", [
    ("inputs", {"counts": 123}, "inputs.counts is the number 123"),
    ("files", {"part-00000.parquet": "not-a-hash"}, "is not \"hash:size\""),
    ("files", ["part-00000.parquet"], "files is a list"),
    ("created", "yesterday", "created is the string 'yesterday', not a timestamp"),
    ("created", 67_768_036_191_676_800, "not a timestamp between 1970 and 9999"),  # ls overflowed on it
    ("final_val_ppl", "abc", "final_val_ppl is the string 'abc', not a number"),
    ("shards", "x", "shards is the string 'x', not a list"),
    ("shards", [{"name": "a/b.parquet"}], "shards[0].name contains a path separator"),
    ("n_vocab", -1, "n_vocab is the number -1"),
])
def test_manifest_of_the_wrong_types_is_unreadable_and_ls_lists_the_rest(ws, tiny_tokens, capsys, field, value,
                                                                        problem):
    other = _hashed_tokens(ws, [[1, 2, 3]] * 3)
    _edit_manifest(tiny_tokens, lambda m: m.update({field: value}))
    rc, out = _main(capsys, "ls", "-w", ws.root)
    assert rc == 0 and other.fingerprint in out
    bad_line = [line for line in out.splitlines() if tiny_tokens.fingerprint in line]
    assert len(bad_line) == 1 and "UNREADABLE" in bad_line[0] and problem in bad_line[0], out
    for command in ("show", "verify"):
        rc, err = _main(capsys, command, tiny_tokens.fingerprint, "-w", ws.root)
        assert rc == 2 and problem in err
    rc, err = _main(capsys, "count", tiny_tokens.fingerprint, "-w", ws.root, "--lags", "1", "--scheduler", "sync")
    assert rc == 2 and problem in err and ws.list("counts") == []


def test_workers_drop_only_lost_scheduler_tracebacks(caplog):
    """The filter each LocalCluster worker installs: a closed scheduler link is dropped, any other error kept."""
    import logging

    from distributed.comm.core import CommClosedError

    from ctstore.cluster import _drop_lost_scheduler_tracebacks

    logger = logging.getLogger("distributed.worker")
    before = list(logger.filters)
    _drop_lost_scheduler_tracebacks()
    try:
        with caplog.at_level(logging.ERROR, logger="distributed.worker"):
            for exc in (CommClosedError("in <TCP (closed)>: Stream is closed"), ValueError("a task's own error")):
                try:
                    raise exc
                except Exception:
                    logger.exception("Failed to communicate with scheduler during heartbeat.")
        assert [r.exc_info[0].__name__ for r in caplog.records] == ["ValueError"]
    finally:
        logger.filters[:] = before
