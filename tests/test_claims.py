"""The claims registry and the verdict statistics: synthetic numbers against scipy and closed forms."""

import json
import os
import tomllib
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ctstore.claims import (VERDICTS, Claim, claims_for, construction, exact, judge, load_claims, missing, paired,
                            t_interval)
from ctstore.experiments.common import claims_section
from ctstore.pipeline import EXPERIMENTS

ROOT = Path(__file__).resolve().parent.parent
PAPERS = {"Paper 51", "Paper 56", "Paper 63", "Paper 66", "Paper 113", "Papers 66, 113"}


def test_t_interval_matches_scipy():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 12):
        x = rng.normal(1.5, 2.0, n)
        mean, low, high = t_interval(x)
        lo, hi = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=stats.sem(x))
        assert mean == pytest.approx(x.mean()) and low == pytest.approx(lo) and high == pytest.approx(hi)
    with pytest.raises(ValueError):
        t_interval([1.0])


@pytest.mark.parametrize("comparison,threshold,tol,low,high,expected", [
    ("<", 0.0, None, -3.0, -1.0, "consistent"),
    ("<", 0.0, None, 1.0, 3.0, "inconsistent"),
    ("<", 0.0, None, -1.0, 1.0, "inconclusive"),
    ("<=", 0.15, None, 0.0, 0.15, "inconclusive"),  # touching the threshold decides nothing
    (">", 1.0, None, 1.2, 2.0, "consistent"),
    (">=", 1.0, None, 0.2, 0.9, "inconsistent"),
    (">", 1.0, None, 0.9, 1.1, "inconclusive"),
    ("within", 2.0, 0.1, 1.95, 2.05, "consistent"),
    ("within", 2.0, 0.1, 2.2, 2.4, "inconsistent"),
    ("within", 2.0, 0.1, 1.5, 1.8, "inconsistent"),
    ("within", 2.0, 0.1, 1.95, 2.2, "inconclusive"),
    ("within", 2.0, 0.1, 1.0, 3.0, "inconclusive"),
])
def test_judge_on_both_sides_and_straddling(comparison, threshold, tol, low, high, expected):
    assert judge(comparison, threshold, low, high, tol) == expected


def test_paired_verdicts_from_synthetic_seed_differences():
    below = paired("p113.head_start", [-30.0, -28.0, -33.0])  # k0 − random ppl, clearly negative
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean([-30, -28, -33]), scale=stats.sem([-30, -28, -33]))
    assert below.verdict == "consistent" and below.n == 3
    assert (below.low, below.high) == (pytest.approx(lo), pytest.approx(hi))
    assert paired("p113.head_start", [30.0, 28.0, 33.0]).verdict == "inconsistent"
    assert paired("p113.head_start", [-5.0, 4.0, -1.0]).verdict == "inconclusive"  # interval covers 0
    one = paired("p113.head_start", [-30.0])
    assert one.verdict == "inconclusive" and "1 seed" in one.note and one.low is None
    gap = paired("p113.gap_to_sgd", [0.02, 0.03, 0.025])  # ≤ 0.05, the paper's §9(1)
    assert gap.verdict == "consistent"
    unmeasured = paired("p113.steps_saved", [2.0, None, 3.0])
    assert unmeasured.verdict == "inconclusive" and "1 of 3" in unmeasured.note
    within = paired("p66.amplitude_pr", [3.0, 3.2, 3.1])  # 3.15 ± 1.04
    assert within.verdict == "consistent"
    assert paired("p66.amplitude_pr", [6.0, 6.2, 6.1]).verdict == "inconsistent"


def test_by_construction_rows_never_get_a_verdict_of_support():
    assert paired("p56.compression", [21.3, 21.3, 21.3]).verdict == "by construction"
    assert construction("p113.speedup", "4.00×").verdict == "by construction"
    assert exact("p56.pairing", 0.97, kind="by construction").verdict == "by construction"
    assert exact("p56.pairing", 0.97, kind="measured").verdict == "consistent"  # a non-circulant kernel
    assert exact("p56.pairing", 0.30, kind="measured").verdict == "inconsistent"
    assert missing("p56.compression", "x").verdict == "by construction"
    assert missing("p56.l2_fails", "not run").verdict == "inconclusive"


def test_exact_values_with_a_range():
    assert exact("p66.pr_two", 2.0, 1.98, 2.04).verdict == "consistent"
    assert exact("p66.pr_two", 1.3, 1.2, 1.4).verdict == "inconsistent"
    assert exact("p66.pr_two", 2.0, 1.5, 2.05).verdict == "inconclusive"
    assert exact("p113.spectral_gap", float("nan")).verdict == "inconclusive"


def test_registry_rows_are_complete():
    claims = load_claims()
    assert len(claims) >= 30
    for c in claims.values():
        assert c.paper in PAPERS and c.section and c.claim and c.paper_value and c.measure, c.id
        assert set(c.pipelines) <= set(EXPERIMENTS), c.id
        assert c.kind in ("measured", "by construction"), c.id
        if c.kind == "measured":
            assert c.comparison in ("<", "<=", ">", ">=", "within") and c.threshold is not None, c.id
    for pipeline in EXPERIMENTS:
        assert claims_for(pipeline), pipeline
    with pytest.raises(ValueError, match="needs a comparison"):
        Claim("x", ("ct_vs_random",), "Paper 51", "§1", "c", "v", "measured", "m")


def test_registry_states_the_papers_not_their_inversions():
    """The rows issue 9 found inverted: each now points the way the paper does, with the paper's number."""
    c = load_claims()
    assert c["p56.l2_fails"].comparison == "<" and c["p56.l2_fails"].threshold == 0  # L2 R² down to −127M
    assert c["p56.l2_fails"].paper_number == -127909185
    assert c["p56.drift_large"].comparison == ">=" and c["p56.drift_large"].threshold == pytest.approx(0.885)
    assert c["p56.drift_cosine"].comparison == "<=" and "0.36" in c["p56.drift_cosine"].claim
    assert c["p63.random_best"].comparison == "<" and c["p63.random_best"].paper_number == pytest.approx(-0.016)
    assert (c["p66.pr_two"].comparison, c["p66.pr_two"].threshold) == ("within", 2.0)
    assert "paper113_predictions" not in c["p66.pr_two"].pipelines and "113" in c["p66.pr_two"].paper
    gap = c["p113.spectral_gap"]
    assert gap.paper_number == pytest.approx(1 - 6.95 / 23.21, abs=0.005) and "singular values" in gap.measure
    by_construction = {i for i, x in c.items() if x.kind == "by construction"}
    assert {"p56.compression", "p56.pairing", "p113.speedup", "p66.compression_grows"} <= by_construction


def test_claims_section_prints_every_registry_row_and_rejects_strangers():
    text, rows = claims_section("ct_vs_random", [paired("p113.head_start", [-3.0, -2.5, -3.5])])
    ids = [r["id"] for r in rows]
    assert ids == [c.id for c in claims_for("ct_vs_random")]
    assert all(f"`{i}`" in text for i in ids)
    by_id = {r["id"]: r for r in rows}
    assert by_id["p113.head_start"]["verdict"] == "consistent"
    assert by_id["p113.gap_to_sgd"]["verdict"] == "inconclusive" and by_id["p113.gap_to_sgd"]["note"]
    assert all(r["verdict"] in VERDICTS for r in rows)
    json.dumps(rows)  # results.json must be able to hold them
    with pytest.raises(ValueError, match="not in the registry"):
        claims_section("ct_vs_random", [paired("p56.l2_fails", [-1.0, -2.0])])


def test_claims_file_is_package_data():
    with open(ROOT / "pyproject.toml", "rb") as f:
        pyproject = tomllib.load(f)
    assert "claims.toml" in pyproject["tool"]["setuptools"]["package-data"]["ctstore"]
    assert os.path.exists(ROOT / "ctstore" / "claims.toml")


# --- issue 18 ---------------------------------------------------------------------------------


def test_gap_to_sgd_reads_the_papers_numbers_not_fifteen_percent():
    c = load_claims()["p113.gap_to_sgd"]
    assert (c.comparison, c.threshold, c.paper_number) == ("<=", 0.05, 0.027)
    assert "2.7%" in c.claim and "5%" in c.claim
    assert paired(c, [0.10, 0.11, 0.12]).verdict == "inconsistent"  # passed the old 15% test


def test_steps_saved_censors_seeds_that_never_reach_the_target():
    from ctstore.experiments.ct_vs_random_summary import first_step_reaching, step_fraction

    c = load_claims()["p113.steps_saved"]
    assert (c.comparison, c.threshold) == ("<", 1.0)
    # K0 never reaching random's final ppl in 3 of 3 seeds: inconsistent, not inconclusive
    misses = [step_fraction([0, 10, 20], [900, 800, 700], 150.0, 500) for _ in range(3)]
    assert misses[0] == (1.0, True)
    m = paired(c, [v for v, _ in misses], censored=[k for _, k in misses])
    assert m.verdict == "inconsistent" and "censored" in m.note
    # step 0 counts as reached (it used to read as "never")
    assert first_step_reaching([0, 10], [100.0, 90.0], 150.0) == 0
    assert step_fraction([0, 10], [100.0, 90.0], 150.0, 500) == (0.0, False)
    # a censored seed can only raise the value: "consistent" is downgraded, "inconsistent" stands
    assert paired(c, [0.2, 0.25, 0.3]).verdict == "consistent"
    assert paired(c, [0.2, 0.25, 1.0], censored=[False, False, True]).verdict == "inconclusive"


def test_a_claim_that_noise_also_passes_reads_holds_for_noise_with_the_null_value():
    from ctstore.claims import claims_table as table, with_null

    ours = paired("p113.layer_diversity", [0.05, 0.06, 0.04])
    null = paired("p113.layer_diversity", [0.02, 0.03, 0.01])
    m = with_null(ours, null, "random init")
    assert m.verdict == "holds for noise" and m.to_dict()["null"]["value"] == pytest.approx(0.02)
    assert "random init: consistent" in table([m])
    kept = with_null(paired("p113.layer_diversity", [0.05, 0.06, 0.04]),
                     paired("p113.layer_diversity", [0.9, 0.95, 0.92]), "random init")
    assert kept.verdict == "consistent"
    from ctstore.claims import Measurement

    back = Measurement.from_dict(m.to_dict())
    assert table([back]) == table([m])


def test_sustained_step_counts_an_arm_that_starts_below_and_leaves_the_target():
    from ctstore.experiments.ct_vs_random_summary import first_step_reaching, first_step_staying

    curve = ([0, 10, 20, 30], [74.0, 773.0, 97.0, 90.0])  # bigram_init at embedding RMS 0.02, seed 0
    assert first_step_reaching(*curve, 96.0) == 0 and first_step_staying(*curve, 96.0) == 30
    assert first_step_staying([0, 10], [100.0, 120.0], 96.0) is None
