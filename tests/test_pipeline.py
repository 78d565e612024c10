"""Pipelines run end to end on tiny settings; their reports print every registry claim with checked values."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ctstore.errors import CtstoreError
from ctstore.claims import claims_for
from ctstore.pipeline import load_pipeline, run_pipeline

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


def test_overrides_and_profiles_parse():
    config = load_pipeline(str(PIPELINES / "ct_vs_random.toml"), "paper", ["sft.steps=7", "model.config=ct-124m"])
    assert config["sft"]["steps"] == 7 and config["sft"]["batch_size"] == 1 and config["sft"]["block_size"] == 512
    assert config["model"]["config"] == "ct-124m" and config["k0"]["dim"] == 256
    assert all(os.path.isabs(p) for p in config["corpus"]["inputs"])
    with pytest.raises(CtstoreError, match="no profile 'nope'"):
        load_pipeline(str(PIPELINES / "ct_vs_random.toml"), "nope")


def check_claim_rows(name: str, report: str, results: dict) -> dict:
    """Every registry claim of ``name`` is a row of the report and of results.json, with a sound interval."""
    rows = {r["id"]: r for r in results["claims"]}
    assert list(rows) == [c.id for c in claims_for(name)]
    for c in claims_for(name):
        row = rows[c.id]
        assert f"`{c.id}`" in report and c.claim in report and c.paper_value in report
        if c.kind == "by construction":
            assert row["verdict"] == "by construction"
        else:
            assert row["verdict"] in ("consistent", "inconsistent", "inconclusive", "holds for noise")
        values = [v for v in row["values"] if v is not None]
        if row["interval"] == "95% t" and row["low"] is not None and np.ptp(values) > 0:
            lo, hi = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
            assert (row["low"], row["high"]) == (pytest.approx(lo), pytest.approx(hi))
            if lo <= (c.threshold or 0) <= hi and c.comparison != "within":
                assert row["verdict"] == "inconclusive"
        if row["n"] is not None and row["n"] < 2 and c.kind == "measured":
            assert row["verdict"] == "inconclusive" and "seed" in row["note"]
    return rows


def test_ct_vs_random_tiny_run_writes_report_with_claims(session_ws):
    overrides = ["sft.steps=6", "sft.eval_every=3", "sft.batch_size=4", "sft.block_size=16",
                 'experiment.arms=["random", "k0", "svd", "random_long", "svd_embeddings", "k0_frozen", "crystallize", '
                 '"bigram_init"]', "experiment.seeds=[0, 1]", "sft.eval_tokens=512", "k0.v_eff=1024", "model.vocab=1024", "k0.power_iters=2"]
    run = run_pipeline(str(PIPELINES / "ct_vs_random.toml"), session_ws, overrides=overrides, scheduler="sync")
    report = open(os.path.join(run.path, "report.md")).read()
    for arm in ("random", "k0", "svd", "random_long", "svd_embeddings", "k0_frozen", "crystallize"):
        assert f"| {arm} |" in report
    results = json.load(open(os.path.join(run.path, "results.json")))
    s = results["summary"]
    assert s["random_long"]["steps"] == 24 and s["k0"]["seeds"] == 2
    rows = check_claim_rows("ct_vs_random", report, results)
    # paired differences average to the difference of the arm means
    assert rows["p113.head_start"]["value"] == pytest.approx(s["k0"]["ppl_mean"] - s["random"]["ppl_mean"])
    assert rows["p113.head_start"]["n"] == 2
    assert os.path.getsize(os.path.join(run.path, "loss_curves.png")) > 1000
    header = next(line for line in report.splitlines() if line.startswith("| arm |"))
    assert all(f" {c} " in header for c in ("recipe", "unk_rate", "coverage"))  # printed beside perplexity
    # issue 18: baselines in every report, a takeaway first, the report re-renders from results.json alone
    from ctstore.experiments.ct_vs_random import render_report

    assert results["baselines"]["bigram_wb"]["ppl"] < results["baselines"]["unigram"]["ppl"]
    assert "Witten–Bell" in report and report.splitlines()[2].startswith("**Takeaway:**")
    assert "positive = worse than random" in report
    assert render_report(results) == report
    assert rows["p113.layer_diversity"]["null"]["model"] == "random init"


class FakeRun:
    """What the report reads of a run: ``manifest`` and ``path/metrics.jsonl``."""

    def __init__(self, path, seed: int, curve: list[tuple[int, float]]):
        os.makedirs(path, exist_ok=True)
        self.path = str(path)
        with open(os.path.join(path, "metrics.jsonl"), "w") as f:
            for step, ppl in curve:
                f.write(json.dumps({"step": step, "val_ppl": ppl, "val_loss": float(np.log(ppl))}) + "\n")
        self.manifest = {"params": {"seed": seed}, "final_val_ppl": curve[-1][1], "steps": curve[-1][0],
                         "train_seconds": 1.0, "flops": 1e9}


def synthetic_runs(tmp_path, seeds):
    runs = {"random": [], "k0": [], "random_long": [], "crystallize": []}
    for s in seeds:
        e = 0.5 * s  # seed-to-seed noise shared by the arms of a seed
        runs["random"].append(FakeRun(tmp_path / f"r{s}", s, [(0, 900), (50, 300 + e), (100, 200 + e)]))
        # k0 reaches random's final ppl (200 + e) at step 50
        runs["k0"].append(FakeRun(tmp_path / f"k{s}", s, [(0, 500), (50, 195 + e), (100, 150 + e + s)]))
        runs["random_long"].append(FakeRun(tmp_path / f"l{s}", s, [(0, 900), (200, 160), (400, 140 + s)]))
        runs["crystallize"].append(FakeRun(tmp_path / f"c{s}", s, [(0, 1000 + 10 * s), (100, 180)]))
    return runs


def test_ct_vs_random_claims_from_synthetic_runs(tmp_path):
    from ctstore.experiments.ct_vs_random_summary import claim_measurements

    rows = {m.claim.id: m for m in claim_measurements(synthetic_runs(tmp_path, [0, 1, 2]))}
    head = rows["p113.head_start"]  # k0 − random per seed: −50 + 0.5s
    assert head.values == pytest.approx([-50, -49, -48]) and head.verdict == "consistent"
    assert (head.low, head.high) == (pytest.approx(-49 - stats.t.ppf(0.975, 2) * 1 / np.sqrt(3)),
                                     pytest.approx(-49 + stats.t.ppf(0.975, 2) * 1 / np.sqrt(3)))
    assert rows["p113.steps_saved"].values == pytest.approx([0.5, 0.5, 0.5])  # reached at 50 of 100 steps
    gap = rows["p113.gap_to_sgd"].values  # k0 / random_long − 1
    assert gap == pytest.approx([150 / 140 - 1, 151.5 / 141 - 1, 153 / 142 - 1])
    assert rows["p113.gap_to_sgd"].verdict == "inconsistent"  # ≈ 0.07 > the paper's 5% (§9(1))
    crystal = rows["p51.crystallized_within_15"]  # before SFT: 1000 / 140 − 1 ≫ 0.15
    assert crystal.values[0] == pytest.approx(1000 / 140 - 1) and crystal.verdict == "inconsistent"
    one = {m.claim.id: m for m in claim_measurements(synthetic_runs(tmp_path / "one", [0]))}
    assert all(m.verdict == "inconclusive" and ("1 seed" in m.note or "workspace" in m.note) for m in one.values())


def test_ct_vs_random_report_table_from_synthetic_runs(tmp_path):
    from ctstore.experiments.ct_vs_random_summary import claims_table

    text, rows = claims_table(synthetic_runs(tmp_path, [0, 1, 2]))
    line = next(x for x in text.splitlines() if x.startswith("| `p113.head_start`"))
    assert "-49 [" in line and "(95% CI, 3 seeds)" in line and "| consistent |" in line
    assert "massive head start" in line  # the paper's own words
    assert [r["id"] for r in rows] == [c.id for c in claims_for("ct_vs_random")]


def test_experiment_measures_against_closed_forms():
    from ctstore.experiments.paper56_recursive import centre_spacing_r
    from ctstore.experiments.paper63_layer_crystallization import relative_costs
    from ctstore.experiments.paper66_scaling import amplitude_pr, slope_per_doubling
    from ctstore.experiments.paper113_predictions import aligned_error, gap_ratio_of_E

    rng = np.random.default_rng(0)
    # Paper 113 §5.2: 1 − s₂/s₁ of E's singular values, 1 − 6.95/23.21 = 0.70 (not 1 − λ₂/λ₁ = 0.91)
    u, _ = np.linalg.qr(rng.standard_normal((50, 4)))
    v, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    E = u @ np.diag([23.21, 6.95, 6.95, 5.03]) @ v.T
    assert gap_ratio_of_E(E) == pytest.approx(1 - 6.95 / 23.21) and gap_ratio_of_E(E) == pytest.approx(0.70, abs=0.01)
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    assert aligned_error(E @ q, E) == pytest.approx(0, abs=1e-9)  # a rotated copy is the same embedding
    from scipy.linalg import orthogonal_procrustes

    F = E + rng.standard_normal(E.shape)
    R, _ = orthogonal_procrustes(F, E)
    assert aligned_error(F, E) == pytest.approx(np.linalg.norm(F @ R - E) / np.linalg.norm(E))
    assert centre_spacing_r(np.array([[10, 40, 70, 100], [100, 10, 70, 40]])) == pytest.approx(1)
    expected = np.corrcoef([0, 1, 2, 3], [0, 1, 2, 100])[0, 1]
    assert centre_spacing_r(np.array([[0, 1, 2, 100]])) == pytest.approx(expected)
    assert amplitude_pr(np.outer(rng.standard_normal(500), [1, 2, 3, 4, 5, 6, 7, 8])) == pytest.approx(1)
    assert amplitude_pr(rng.standard_normal((20000, 8))) == pytest.approx(8, rel=0.05)
    assert slope_per_doubling([64, 128, 256], [0.4, 0.3, 0.2]) == pytest.approx(-0.1)
    losses = {(1, "trained"): 2.0, (1, "frozen"): 2.02, (1, "rank1"): 1.98, (1, "random"): 1.9}
    costs = relative_costs(losses, [1])
    assert costs == {"frozen": pytest.approx(0.01), "rank1": pytest.approx(-0.01),
                     "random_vs_best": pytest.approx((1.9 - 1.98) / 2.0)}


TINY_SFT = ["sft.steps=4", "sft.eval_every=2", "sft.batch_size=2", "sft.block_size=16", "k0.power_iters=1"]


@pytest.mark.slow
@pytest.mark.parametrize("name,seeds,extra", [  # paper56 (the costly fits) runs one seed: the "1 seed" path
    ("paper56_recursive", [0], ["k0.v_eff=512", "model.vocab=512"]),
    ("paper63_layer_crystallization", [0, 1], ["k0.v_eff=512", "model.vocab=512", "experiment.layers=[1]"]),
    ("paper66_scaling", [0, 1], ["k0.v_eff=512", "model.vocab=512", "experiment.widths=[32, 64]",
                                 "experiment.vocab_sizes=[64, 128]"]),
    ("paper113_predictions", [0, 1], ["model.vocab=512", "experiment.v_effs=[256, 512]",
                                      "experiment.hierarchical_v_eff=512", 'experiment.sizes=["tiny"]']),
])
def test_paper_pipelines_run_tiny_and_report_every_claim(session_ws, name, seeds, extra):
    overrides = TINY_SFT + [f"experiment.seeds={seeds}"] + extra
    run = run_pipeline(str(PIPELINES / f"{name}.toml"), session_ws, overrides=overrides, scheduler="sync")
    report = open(os.path.join(run.path, "report.md")).read()
    results = json.load(open(os.path.join(run.path, "results.json")))
    rows = check_claim_rows(name, report, results)
    assert "## Claims beside measurements" in report and "### What each row measures" in report
    by_seed = [r for r in rows.values() if r["interval"] == "95% t" and r["verdict"] != "by construction"
               and r["values"]]
    assert by_seed and all(len(r["values"]) == len(seeds) for r in by_seed)
    if len(seeds) == 1:
        assert all(r["verdict"] == "inconclusive" and "1 seed" in r["note"] for r in by_seed)


def test_ct_vs_random_optional_columns_from_manifests_or_summary(tmp_path):
    from ctstore.experiments.ct_vs_random_summary import extra_columns

    runs = synthetic_runs(tmp_path, [0, 1])
    assert extra_columns(runs, {}) == {}  # older runs: no column
    for i, r in enumerate(runs["k0"]):
        r.manifest.update(unk_rate=0.1 + 0.1 * i, recipe="rotated")
    extra = extra_columns(runs, {"random": {"coverage": 0.9}})
    assert extra == {"recipe": {"k0": "rotated"}, "unk_rate": {"k0": pytest.approx(0.15)}, "coverage": {"random": 0.9}}


@pytest.mark.slow
def test_paper56_fits_identical_matrices_once(monkeypatch):
    import ctstore.experiments.paper56_recursive as p56
    import torch

    from ctstore.model import PhotonicGPT, get_config

    calls = []
    real = p56.fit_harmonic
    monkeypatch.setattr(p56, "fit_harmonic", lambda w, **kw: calls.append(w.shape) or real(w, **kw))
    model = PhotonicGPT(get_config("tiny", vocab_size=40, n_embd=16))
    h = model.transformer.h[0].attn.c_attn.weight
    with torch.no_grad():
        h[16:32] = h[:16]  # K block = Q block
    memo = {}
    first = p56.fit_matrices(model, 32, K=2, K2=2, ridge=1e-5, memo=memo)
    assert len(calls) == 8 and first["L0 K"] == first["L0 Q"]
    again = p56.fit_matrices(model, 32, K=2, K2=2, ridge=1e-5, memo=memo)
    assert len(calls) == 8 and again == first


@pytest.mark.parametrize("name", ["paper56_recursive", "paper63_layer_crystallization", "paper66_scaling",
                                  "paper113_predictions"])
def test_paper_pipelines_count_training_documents_only(name):
    """Every pipeline that fine-tunes counts at SFT's split (test_science checks what that excludes)."""
    from ctstore.experiments.common import prepare
    from ctstore.pipeline import load_pipeline

    class RecordingContext:
        def tokens(self, corpus):
            return "tokens"

        def counts(self, tokens, count):
            return count

    config = load_pipeline(str(PIPELINES / f"{name}.toml"))
    _, count = prepare(config, RecordingContext())
    assert count["val_fraction"] == pytest.approx(float(config["sft"].get("val_fraction", 0.1)))
    assert 0 < count["val_fraction"] < 1


def test_summary_answers_the_converse_step_question_with_censoring(tmp_path):
    """An arm that starts below random's final ppl has step fraction 0 by construction; the summary also gives
    how far random must train to reach that arm's step-0 ppl (censored at 1 when it never does)."""
    from ctstore.experiments.ct_vs_random_summary import summarize

    def run(name, seed, curve):
        r = FakeRun(tmp_path / name, seed, curve)
        r.manifest["params"].update(steps=100, eval_every=10, batch_size=4)
        r.manifest.update(final_val_loss=float(np.log(curve[-1][1])), eval_block=128, train_seconds=2.0,
                          flops=4e9, device="cpu", mfu=None, mfu_note="no known peak for device 'cpu'")
        return r

    runs = {"random": [run("r0", 0, [(0, 4000), (50, 150), (100, 100)]),
                       run("r1", 1, [(0, 4000), (50, 130), (100, 90)])],
            "starts_low": [run("a0", 0, [(0, 80), (50, 70), (100, 60)]),   # random never reaches 80
                           run("a1", 1, [(0, 140), (50, 70), (100, 60)])],  # random reaches 140 at step 50
            "starts_high": [run("b0", 0, [(0, 3000), (50, 200), (100, 95)]),
                            run("b1", 1, [(0, 3000), (50, 200), (100, 95)])]}
    s = summarize(runs)
    low = s["starts_low"]
    assert [p["step_fraction"] for p in low["per_seed"]] == [0.0, 0.5]  # seed 0 starts below random's final
    assert [p["random_fraction_to_start"] for p in low["per_seed"]] == [1.0, 0.5]
    assert low["random_fraction_to_start"]["censored"] == 1 and low["random_fraction_to_start"]["mean"] == 0.75
    high = s["starts_high"]  # random is below 3000 from step 50: fraction 0.5, nothing censored
    assert high["random_fraction_to_start"]["mean"] == 0.5 and high["random_fraction_to_start"]["censored"] == 0
    # throughput from the schedule when the manifest predates the recorded fields: 100 × 4 × 128 tokens / 2 s
    assert s["random"]["tokens_per_s"] == 100 * 4 * 128 / 2.0 and s["random"]["model_flops_per_s"] == 2e9
    assert s["random"]["mfu"] is None
