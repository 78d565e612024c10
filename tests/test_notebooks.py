"""Every notebook in notebooks/ executes top to bottom on the sample corpus, and what it prints is right.

The test appends one cell to each notebook (in memory only) that writes a few of
its variables (artifact paths, arrays) to a JSON file; the numbers the notebook
printed are then recomputed independently from those artifacts with pyarrow,
zarr, safetensors and numpy.
"""

import json
import os
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))

PROBES = {  # per notebook: a JSON-able expression over its variables
    "count_store_tour": "{'tokens': tokens.path}",
    "k0_fourier": "{'k0': k0.path, 'svd': svd.path}",
    "harmonic_fits": "{'model': seed_model(emb, ws, params=SeedParams(config='tiny', vocab=2048)).path, "
                     "'W': W.tolist(), 'recon': {K: results[K].reconstruction.tolist() for K in (4, 8)}}",
    "ct_vs_random": "{'runs': [ws.get(fp).path for fp in run.manifest['inputs']['runs']]}",
}


def test_notebooks_exist_and_are_stripped():
    assert len(NOTEBOOKS) >= 4
    assert {p.stem for p in NOTEBOOKS} == set(PROBES), "every notebook has its checks below"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path_factory, tmp_path, monkeypatch):
    home = tmp_path_factory.getbasetemp() / "notebook-ws"  # shared: notebooks reuse each other's artifacts
    probe = tmp_path / "probe.json"
    monkeypatch.setenv("CTSTORE_HOME", str(home))
    monkeypatch.setenv("CTSTORE_NO_PROGRESS", "1")
    monkeypatch.setenv("CTSTORE_NOTEBOOK_PROBE", str(probe))
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json as _json, os as _os\n"
        f"_json.dump({PROBES[path.stem]}, open(_os.environ['CTSTORE_NOTEBOOK_PROBE'], 'w'))"))
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    printed = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    CHECKS[path.stem](printed, json.loads(probe.read_text()))


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the notebook's output:\n{text[:2000]}"
    return float(match.group(1))


def _check_count_store_tour(printed: str, probe: dict) -> None:
    """Documents, tokens, non-zeros per lag and the Zipf slope, from the Parquet shards alone."""
    import pyarrow.parquet as pq

    docs = []
    for shard in sorted(Path(probe["tokens"]).glob("part-*.parquet")):
        docs += [np.asarray(d, np.int64) for d in pq.read_table(shard).column("tokens").to_pylist()]
    n_vocab = int(_number(r"V = (\d+)", printed))
    assert _number(r"(\d+) documents", printed) == len(docs)
    assert _number(r"documents, (\d+) tokens", printed) == sum(d.size for d in docs)
    for k in range(1, 11):  # stored entries of lag k = distinct (a, b) pairs k apart in one document
        pairs = np.concatenate([d[:-k] * n_vocab + d[k:] for d in docs if d.size > k])
        assert _number(rf"lag {k:2d}: +(\d+) non-zeros", printed) == np.unique(pairs).size, k
    freq = np.sort(np.bincount(np.concatenate(docs)))[::-1]
    freq = freq[freq > 0][:5000]
    slope = np.polyfit(np.log(np.arange(1, freq.size + 1)), np.log(freq), 1)[0]
    assert _number(r"Zipf slope of the head: (-?[\d.]+)", printed) == pytest.approx(round(slope, 2), abs=1e-9)


def _pairing(spectrum: np.ndarray) -> float:
    """Naive share of values with an equal (rtol 1e-3) neighbour in descending order."""
    lam = sorted(np.abs(spectrum.astype(np.float64)), reverse=True)
    paired = [any(j in (i - 1, i + 1) and abs(lam[j] - lam[i]) <= 1e-3 * abs(lam[j]) for j in range(len(lam)))
              for i in range(len(lam))]
    return sum(paired) / len(lam)


def _check_k0_fourier(printed: str, probe: dict) -> None:
    """Pairing fractions and the Fourier-mode energy share, from the embeddings' Zarr arrays."""
    import zarr

    k0 = zarr.open_group(os.path.join(probe["k0"], "embeddings.zarr"), mode="r")
    svd = zarr.open_group(os.path.join(probe["svd"], "embeddings.zarr"), mode="r")
    assert _number(r"pairing fraction K0: ([\d.]+)", printed) == pytest.approx(_pairing(k0["spectrum"][:]))
    assert _number(r"SVD: ([\d.]+)", printed) == pytest.approx(_pairing(svd["spectrum"][:]))
    column = k0["E"][:][k0["active"][:].astype(np.int64), 1].astype(np.float64)
    power = np.abs(np.fft.rfft(column)) ** 2
    share = power.max() / power.sum()
    assert _number(r"top frequency: ([\d.]+)", printed) == pytest.approx(round(share, 3), abs=1e-9)
    assert share > 0.99  # a K0 column is one Fourier mode of frequency rank (docs/design.md §4)


def _check_harmonic_fits(printed: str, probe: dict) -> None:
    """W is the seeded model's layer-1 c_attn rows; R², MSE and compression of the printed fits."""
    from safetensors.numpy import load_file

    W = np.asarray(probe["W"])
    stored = load_file(os.path.join(probe["model"], "model.safetensors"))["transformer.h.1.attn.c_attn.weight"]
    assert np.array_equal(W, stored[:64].astype(np.float64))
    for K in (4, 8):
        recon = np.asarray(probe["recon"][str(K)])
        r2 = 1 - ((W - recon) ** 2).sum() / ((W - W.mean()) ** 2).sum()
        mse = ((W - recon) ** 2).mean()
        assert _number(rf"K={K}: R² (-?[\d.]+)", printed) == pytest.approx(round(r2, 4), abs=1e-9)
        assert _number(rf"K={K}: R² -?[\d.]+, MSE ([\d.e+-]+)", printed) == pytest.approx(mse, rel=0.01)
        assert _number(rf"K={K}: .*compression ([\d.]+)x", printed) == round(64 / (3 * K), 1)


def _check_ct_vs_random(printed: str, probe: dict) -> None:
    """Each arm's printed perplexities are its run's first evaluation and final perplexity (one seed)."""
    rows = {m.group(1): (float(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"^(\S+) +before SFT +([\d.]+) +after +([\d.]+)$", printed, re.M)}
    runs = []
    for path in probe["runs"]:
        manifest = json.loads(Path(path, "manifest.json").read_text())
        first = json.loads(Path(path, "metrics.jsonl").read_text().splitlines()[0])
        runs.append((manifest["init"], round(first["val_ppl"], 1), round(manifest["final_val_ppl"], 1)))
    assert len(rows) == len(runs) == 4  # quickstart's arms, one seed each
    assert sorted(rows.values()) == sorted((before, after) for _, before, after in runs)
    [random_run] = [r for r in runs if r[0] == "random"]
    assert rows["random"] == random_run[1:]
    assert rows["random"][1] < rows["random"][0]  # SFT lowered the random model's perplexity


CHECKS = {"count_store_tour": _check_count_store_tour, "k0_fourier": _check_k0_fourier,
          "harmonic_fits": _check_harmonic_fits, "ct_vs_random": _check_ct_vs_random}
