"""Scaling of count and k0 on a real Dask cluster: 1, 2, 4 workers; local vs S3 (moto) workspace.

    python benchmarks/scaling.py                    # V = 131,072, 20M tokens, 1/2/4 workers (long)
    python benchmarks/scaling.py --quick            # V = 4,096, 400K tokens, 1/2 workers: checks it runs

For every (workspace, workers) it starts a `dask scheduler` and N `dask worker`
processes (1 thread each) on 127.0.0.1, runs `ctstore count --spill` and
`ctstore k0 --kernel none` against them with ``--force``, and records wall
seconds and the bytes each job wrote to scratch (``scratch_bytes`` in the
manifests), per token. The S3 workspace is a moto server on 127.0.0.1 whose
endpoint and keys reach the jobs only through ``CTSTORE_STORAGE_OPTIONS``, so
scratch goes through the object store as on a real cluster.

On a 2-core machine the point is the overhead of remote scratch on the same
workers (issue 16's target: S3 ≤ 1.5× local wall), not speed-up. The load
average is recorded beside every figure; take figures only on a quiet machine.
JSON goes to ``benchmarks/results/scaling-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ctstore.testing import S3_KEY, free_port, s3_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _load() -> float:
    return os.getloadavg()[0]


def _env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_", "CTSTORE_STORAGE_OPTIONS"))}
    return {**env, "PYTHONPATH": str(ROOT), "CTSTORE_NO_PROGRESS": "1", **extra}


def ctstore(args: list[str], ws: str, env: dict) -> tuple[dict, float]:
    """Run one CLI command; return (manifest, wall seconds)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ctstore.cli", *args, "-w", ws, "--json", "-q"],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"ctstore {' '.join(args)}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout), wall


class Cluster:
    """`dask scheduler` + n single-threaded `dask worker`s on 127.0.0.1."""

    def __init__(self, n: int, memory_limit: str, env: dict):
        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
        self.procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                                        "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"], **quiet)]
        for i in range(n):
            self.procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", self.address,
                                                "--nthreads", "1", "--memory-limit", memory_limit, "--no-nanny",
                                                "--host", "127.0.0.1", "--name", f"w{i}"], **quiet))
        from distributed import Client

        with Client(self.address, timeout="60s") as client:
            client.wait_for_workers(n, timeout=120)

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def run(args) -> dict:
    with s3_server("ctstore", process=True) as endpoint:  # its own process, as a real object store is
        return _run(args, {"endpoint_url": endpoint, "key": S3_KEY, "secret": S3_KEY,
                           "client_kwargs": {"region_name": "us-east-1"}})


def _run(args, options: dict) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="ctstore-scaling-"))
    stores = {"local": (str(tmp / "ws"), _env({"TMPDIR": str(tmp)})),
              "s3": ("s3://ctstore/ws", _env({"TMPDIR": str(tmp), "CTSTORE_STORAGE_OPTIONS": json.dumps(options)}))}
    synth = ["synth", "--vocab", str(args.vocab), "--tokens", str(args.tokens), "--shard-tokens",
             str(args.shard_tokens)]
    rows = []
    for store, (ws, env) in stores.items():
        tokens, synth_s = ctstore(synth, ws, env)
        print(f"{store}: {tokens['tokens']} tokens, V={args.vocab}, {len(tokens['shards'])} shards "
              f"({synth_s:.1f} s)", flush=True)
        for n in args.workers:
            cluster = Cluster(n, args.worker_memory, env)
            try:
                load = _load()
                counts, count_s = ctstore(["count", tokens["fingerprint"], "--lags", str(args.lags), "--spill",
                                           "--scheduler", cluster.address, "--memory", args.memory,
                                           "--force"], ws, env)
                emb, k0_s = ctstore(["k0", counts["fingerprint"], "--kernel", "none", "--dim", str(args.dim),
                                     "--v-eff", str(args.v_eff), "--scheduler", cluster.address,
                                     "--memory", args.memory, "--force"], ws, env)
            finally:
                cluster.close()
            row = {"store": store, "workers": n, "tokens": counts["tokens"], "count_s": round(count_s, 2),
                   "count_scratch_bytes": counts.get("scratch_bytes"),
                   "count_scratch_bytes_per_token": round(counts.get("scratch_bytes", 0) / counts["tokens"], 2),
                   "k0_s": round(k0_s, 2), "k0_scratch_bytes": emb.get("scratch_bytes"),
                   "k0_scratch_bytes_per_token": round((emb.get("scratch_bytes") or 0) / counts["tokens"], 3),
                   "map_tasks": counts["map_tasks"], "reduce_tasks": counts["reduce_tasks"],
                   "load_before": round(load, 2), "load_after": round(_load(), 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    ratios = {}
    for n in args.workers:
        by = {r["store"]: r for r in rows if r["workers"] == n}
        if {"local", "s3"} <= by.keys():
            ratios[str(n)] = {"count": round(by["s3"]["count_s"] / by["local"]["count_s"], 2),
                              "k0": round(by["s3"]["k0_s"] / by["local"]["k0_s"], 2)}
    return {"benchmark": "scaling", "params": vars(args), "rows": rows, "s3_over_local_wall": ratios,
            "target": "S3 scratch <= 1.5x local scratch wall on the same workers", "cpus": os.cpu_count(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes: V=4096, 400K tokens, 1 and 2 workers")
    p.add_argument("--vocab", type=int, default=131_072)
    p.add_argument("--tokens", default="20M")
    p.add_argument("--shard-tokens", default="2M")
    p.add_argument("--lags", type=int, default=3)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--v-eff", default="16384")
    p.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    p.add_argument("--memory", default="4GB", help="--memory of each ctstore command")
    p.add_argument("--worker-memory", default="1500MB", help="--memory-limit of each dask worker")
    args = p.parse_args(argv)
    if args.quick:
        args.vocab, args.tokens, args.shard_tokens, args.v_eff, args.workers = 4096, "400K", "100K", "1024", "1,2"
    args.workers = [int(w) for w in str(args.workers).split(",")]
    result = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"scaling-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}; S3/local wall: {result['s3_over_local_wall']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
