"""Pipelines run end to end on tiny settings and their reports hold every claim row."""

import json
import os
from pathlib import Path

import pytest

from ctstore._util import CtstoreError
from ctstore.pipeline import load_pipeline, run_pipeline

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


def test_overrides_and_profiles_parse():
    config = load_pipeline(str(PIPELINES / "ct_vs_random.toml"), "paper", ["sft.steps=7", "model.config=tiny"])
    assert config["sft"]["steps"] == 7 and config["sft"]["batch_size"] == 1 and config["sft"]["block_size"] == 512
    assert config["model"]["config"] == "tiny" and config["k0"]["dim"] == 256
    assert all(os.path.isabs(p) for p in config["corpus"]["inputs"])
    with pytest.raises(CtstoreError, match="no profile 'nope'"):
        load_pipeline(str(PIPELINES / "ct_vs_random.toml"), "nope")


def test_ct_vs_random_tiny_run_writes_report_with_claims(session_ws):
    overrides = ["sft.steps=6", "sft.eval_every=3", "sft.batch_size=4", "sft.block_size=16",
                 'experiment.arms=["random", "k0", "svd", "random_long", "svd_embeddings", "k0_frozen", "crystallize"]',
                 "experiment.seeds=[0, 1]", "k0.v_eff=1024", "model.vocab=1024", "k0.power_iters=2"]
    run = run_pipeline(str(PIPELINES / "ct_vs_random.toml"), session_ws, overrides=overrides, scheduler="sync")
    report = open(os.path.join(run.path, "report.md")).read()
    for arm in ("random", "k0", "svd", "random_long", "svd_embeddings", "k0_frozen", "crystallize"):
        assert f"| {arm} |" in report
    assert "Paper 113 §8" in report and "Paper 51" in report
    results = json.load(open(os.path.join(run.path, "results.json")))
    assert results["summary"]["random_long"]["steps"] == 24
    assert results["summary"]["k0"]["seeds"] == 2
    assert os.path.getsize(os.path.join(run.path, "loss_curves.png")) > 1000


TINY_SFT = ["sft.steps=4", "sft.eval_every=2", "sft.batch_size=2", "sft.block_size=16", "k0.power_iters=1"]


@pytest.mark.slow
@pytest.mark.parametrize("name,extra,claims", [
    ("paper56_recursive", ["k0.v_eff=512", "model.vocab=512"], 6),
    ("paper63_layer_crystallization", ["k0.v_eff=512", "model.vocab=512", "experiment.layers=[1]"], 3),
    ("paper66_scaling", ["k0.v_eff=512", "model.vocab=512", "experiment.widths=[32, 64]",
                         "experiment.vocab_sizes=[64, 128]"], 3),
    ("paper113_predictions", ["model.vocab=512", "experiment.v_effs=[256, 512]", "experiment.hierarchical_v_eff=512",
                              'experiment.sizes=["tiny"]'], 4),
])
def test_paper_pipelines_run_tiny_and_report_every_claim(session_ws, name, extra, claims):
    run = run_pipeline(str(PIPELINES / f"{name}.toml"), session_ws, overrides=TINY_SFT + extra, scheduler="sync")
    report = open(os.path.join(run.path, "report.md")).read()
    results = json.load(open(os.path.join(run.path, "results.json")))
    assert len(results["claims"]) == claims
    for source, claim, measured, verdict in results["claims"]:
        assert claim in report and verdict in ("supported", "not supported", "n/a")
    assert "## Claims beside measurements" in report
