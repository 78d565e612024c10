"""The same jobs on a LocalCluster and on a real `dask scheduler` + `dask worker`s on 127.0.0.1."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from ctstore.cluster import PROFILE_VARIABLE, WORKER_MALLOC, Runner, plan_cluster
from ctstore.embed import K0Params, embed_counts, load_embeddings


@pytest.mark.parametrize("memory,workers,ok", [("2GB", 2, True), ("4GB", 2, True), ("600MB", 2, False)])
def test_plan_cluster_table(memory, workers, ok):
    from ctstore.errors import CtstoreError

    if not ok:
        with pytest.raises(CtstoreError, match="too small"):
            plan_cluster(memory, n_workers=workers)
        return
    p = plan_cluster(memory, n_workers=workers)
    assert p.n_workers * p.worker_memory <= p.memory
    assert 0 < p.task_memory < p.worker_memory


def _square(x):
    if x == 13:
        raise ValueError("thirteen")
    return x * x


@pytest.mark.parametrize("scheduler", ["sync", pytest.param("local", marks=pytest.mark.slow)])
def test_stream_runs_the_jobs_each_result_brings(scheduler):
    """Runner.stream: every first job runs, each result may bring more (here: x -> x + 10 while below 40),
    all of them reach on_result exactly once; a task's exception reaches the caller."""
    seen = []

    def on_result(tag, result):
        seen.append((tag, result))
        return [(tag + 10, _square, (tag + 10,))] if tag + 10 < 40 else []

    with Runner("2GB", scheduler, n_workers=1) as runner:
        runner.stream([(x, _square, (x,)) for x in (1, 2, 4)], on_result, desc="stream test")
        assert sorted(seen) == sorted((x, x * x) for x in (1, 2, 4, 11, 12, 14, 21, 22, 24, 31, 32, 34))
        if scheduler == "sync":  # the jobs a result brings run before the first jobs still waiting
            assert [tag for tag, _ in seen] == [1, 11, 21, 31, 2, 12, 22, 32, 4, 14, 24, 34]
        with pytest.raises(ValueError, match="thirteen"):
            runner.stream([(3, _square, (3,))], lambda tag, result: [(13, _square, (13,))], desc="failing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dashboard_answers_while_a_job_runs():
    with Runner("2GB", "local", n_workers=1, dashboard=f"127.0.0.1:{_free_port()}") as runner:
        link = runner.dashboard_link
        assert link.startswith("http://127.0.0.1:")
        future = runner.client.submit(time.sleep, 3)
        with urllib.request.urlopen(link, timeout=10) as response:
            body = response.read().decode(errors="replace")
            assert response.status == 200
        assert "requires bokeh" not in body.lower()
        future.result()
        # workers keep freed memory for the next task (cluster.WORKER_MALLOC), other pre-spawn settings kept
        env = next(iter(runner.client.run(lambda: {k: os.environ.get(k) for k in
                                                     ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}).values()))
        assert env == {"MALLOC_TRIM_THRESHOLD_": WORKER_MALLOC["MALLOC_TRIM_THRESHOLD_"], "OMP_NUM_THREADS": "1"}
        # the statistical profiler is off in the workers (7% of a count's map), unless the user turns it on
        profiling = runner.client.run(lambda: __import__("dask").config.get("distributed.worker.profile.enabled"))
        assert list(profiling.values()) == [os.environ.get(PROFILE_VARIABLE, "").lower() == "true"]


@pytest.mark.slow
def test_k0_on_local_cluster_and_real_scheduler_match_sync(session_ws, sample_counts, tmp_path):
    params = K0Params(dim=16, v_eff=2048, kernel="none", power_iters=3)
    reference = load_embeddings(embed_counts(sample_counts, session_ws, scheduler="sync", params=params))[0]
    local = embed_counts(sample_counts, session_ws, scheduler="local", memory="2GB", params=params, force=True)
    assert np.allclose(load_embeddings(local)[0], reference, atol=1e-4)

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--dashboard-address", ":0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(2)
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                           "--nthreads", "1", "--memory-limit", "1GB", "--host", "127.0.0.1"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        remote = embed_counts(sample_counts, session_ws, scheduler=address, params=params, force=True)
        assert np.allclose(load_embeddings(remote)[0], reference, atol=1e-4)
        exact = K0Params(dim=16, v_eff=2048)
        a = embed_counts(sample_counts, session_ws, scheduler=address, params=exact, force=True)
        b = load_embeddings(embed_counts(sample_counts, session_ws, scheduler="sync", params=exact, force=True))[0]
        assert np.allclose(load_embeddings(a)[0], b, atol=1e-5)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
