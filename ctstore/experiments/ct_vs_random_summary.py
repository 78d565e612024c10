"""CT vs random: what the runs of each arm say (the summary, the paired per-seed claims, the extra columns).

Read by :mod:`ctstore.experiments.ct_vs_random` when it writes its report.
Every figure is paired per seed against the ``random`` run of the same seed
(see that module's docstring for the arms).
"""

from __future__ import annotations

import numpy as np

from .common import claims_section, eval_curve

__all__ = ["claim_measurements", "claims_table", "extra_columns", "first_step_reaching", "summarize"]


def first_step_reaching(steps: list, ppl: list, target: float) -> int | None:
    """First evaluated step at which perplexity is at or below ``target`` (None: never)."""
    return next((s for s, p in zip(steps, ppl) if p <= target), None)


def _seed_of(run) -> int:
    return int(run.manifest["params"]["seed"])


def summarize(runs: dict[str, list]) -> dict:
    """Per arm: means over seeds, ``per_seed`` values and paired differences against ``random``.

    Paired values use the ``random`` run of the same seed; ``steps_to_random_final`` and
    ``step_saving`` only for arms whose schedule length equals random's.
    """
    out = {}
    random_by_seed = {_seed_of(r): r for r in runs.get("random", [])}
    for arm, rs in runs.items():
        per_seed = []
        for r in rs:
            m = r.manifest
            steps, ppl = eval_curve(r, "val_ppl")
            row = {"seed": _seed_of(r), "final_val_ppl": m["final_val_ppl"], "final_val_loss": m["final_val_loss"],
                   "ppl_before_sft": ppl[0], "unk_rate": m.get("final_val_unk_rate"),
                   "ppl_known": m.get("final_val_ppl_known"), "type_coverage": m.get("val_type_coverage"),
                   "steps": m["steps"], "seconds": m["train_seconds"]}
            base = random_by_seed.get(row["seed"])
            if base is not None:
                row["ppl_diff_vs_random"] = m["final_val_ppl"] - base.manifest["final_val_ppl"]
                row["loss_diff_vs_random"] = m["final_val_loss"] - base.manifest["final_val_loss"]
                if m["params"]["steps"] == base.manifest["params"]["steps"]:
                    reached = first_step_reaching(steps, ppl, base.manifest["final_val_ppl"])
                    row["steps_to_random_final"] = reached
                    row["step_saving"] = None if reached is None else base.manifest["steps"] - reached
            per_seed.append(row)
        ppl = np.array([r.manifest["final_val_ppl"] for r in rs])
        m0 = rs[0].manifest
        s = {"ppl_mean": float(ppl.mean()), "ppl_before_sft": float(np.mean([p["ppl_before_sft"] for p in per_seed])),
             "ppl_std": float(ppl.std(ddof=1)) if len(ppl) > 1 else 0.0,
             "seconds": float(np.mean([r.manifest["train_seconds"] for r in rs])),
             "flops": float(np.mean([r.manifest["flops"] for r in rs])),
             "steps": int(np.mean([r.manifest["steps"] for r in rs])), "seeds": len(rs),
             "schedule_steps": m0["params"]["steps"], "eval_every": m0["params"]["eval_every"],
             "eval_tokens": m0.get("eval_tokens"), "eval_block": m0.get("eval_block"),
             "unk_rate": _mean(p["unk_rate"] for p in per_seed),
             "type_coverage": _mean(p["type_coverage"] for p in per_seed),
             "ppl_known_mean": _mean(p["ppl_known"] for p in per_seed),
             "model_vocab": m0.get("model_vocab"), "recipe": m0.get("recipe"),
             "embed_scale": m0.get("embed_scale"), "tie_head": m0.get("tie_head"),
             "frozen_embeddings": bool(m0["params"].get("freeze_embeddings")), **_seeding_facts(rs),
             "per_seed": per_seed}
        if all("ppl_diff_vs_random" in p for p in per_seed):
            s["paired_ppl_diff_vs_random"] = [p["ppl_diff_vs_random"] for p in per_seed]
            s["paired_loss_diff_vs_random"] = [p["loss_diff_vs_random"] for p in per_seed]
        if per_seed and all("steps_to_random_final" in p for p in per_seed):
            reached = [p["steps_to_random_final"] for p in per_seed]
            s["steps_to_random_final"] = None if None in reached else float(np.mean(reached))
            s["step_saving_per_seed"] = [p["step_saving"] for p in per_seed]
        out[arm] = s
    if "random_long" in out:
        for arm in out:
            out[arm]["gap_to_long"] = out[arm]["ppl_mean"] - out["random_long"]["ppl_mean"]
    return out


def _seeding_facts(rs: list) -> dict:
    """From the seeded models' manifests: spectral gap, layer cosines and how permutation-like the layers are."""
    reports = []
    for r in rs:
        ws = getattr(r, "workspace", None)
        model = ws.find("model", r.manifest.get("inputs", {}).get("model", "")) if ws is not None else None
        if model is not None:
            reports.append(model.manifest.get("report", {}))
    return {"spectral_gap_ratio": _mean(x.get("spectral_gap_ratio") for x in reports),
            "layer_cosine_mean": _mean((x.get("layer_cosine") or {}).get("mean") for x in reports),
            "max_row_energy_share": _mean(x.get("max_row_energy_share") for x in reports)}


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _by_seed(runs: dict, arm: str) -> dict:
    """``{seed: run}`` of an arm; the seed is the SFT seed stored in each run's manifest."""
    return {r.manifest.get("params", {}).get("seed", i): r for i, r in enumerate(runs.get(arm, []))}


def _paired_values(runs: dict, arm: str, baseline: str, value) -> tuple[list, list]:
    """``value(arm_run, baseline_run)`` for every seed both arms ran, and those seeds."""
    a, b = _by_seed(runs, arm), _by_seed(runs, baseline)
    seeds = sorted(set(a) & set(b))
    return [value(a[s], b[s]) for s in seeds], seeds


def claim_measurements(runs: dict) -> list:
    """The registry's ct_vs_random claims measured from ``runs`` (``{arm: [run per seed]}``)."""
    from ..claims import missing, paired

    final = lambda r: r.manifest["final_val_ppl"]  # noqa: E731

    def steps_ratio(a, b):
        reached = first_step_reaching(*eval_curve(a, "val_ppl"), final(b))
        return b.manifest["steps"] / reached if reached else None

    tests = [  # claim, arm, baseline, per-seed value(arm run, baseline run), note
        ("p113.head_start", "k0", "random", lambda a, b: final(a) - final(b), ""),
        ("p113.gap_to_sgd", "k0", "random_long", lambda a, b: final(a) / final(b) - 1, ""),
        ("p51.crystallized_within_15", "crystallize", "random_long",
         lambda a, b: eval_curve(a, "val_ppl")[1][0] / final(b) - 1, "crystallize evaluated before SFT"),
        ("p113.steps_saved", "k0", "random", steps_ratio, ""),
    ]
    out = []
    for claim_id, arm, baseline, value, note in tests:
        if arm not in runs or baseline not in runs:
            out.append(missing(claim_id, f"needs arms {arm} and {baseline}"))
            continue
        values, seeds = _paired_values(runs, arm, baseline, value)
        if not values:
            out.append(missing(claim_id, f"no seed ran both {arm} and {baseline}"))
            continue
        if None in values:
            note = f"{note}; " if note else ""
            note += f"{arm} never reached {baseline}'s final ppl in seed(s) " + \
                ", ".join(str(s) for s, v in zip(seeds, values) if v is None)
        out.append(paired(claim_id, values, note=f"{arm} vs {baseline}, seeds {seeds}" + (f"; {note}" if note else "")))
    return out


def claims_table(runs: dict) -> tuple[str, list]:
    """The report's claims section (markdown) and its rows for ``results.json``."""
    return claims_section("ct_vs_random", claim_measurements(runs))


def extra_columns(runs: dict, summary: dict) -> dict:
    """``{field: {arm: value}}`` for the optional per-arm fields (seeding recipe, <unk> rate, coverage).

    Taken from the summary when it has them (coverage under its summary name ``type_coverage`` too), else
    from the runs' manifests (mean over seeds for numbers); a field no arm has is left out, so older runs
    still report.
    """
    out = {}
    for key, names in (("recipe", ("recipe",)), ("unk_rate", ("unk_rate",)),
                       ("coverage", ("coverage", "type_coverage"))):
        column = {}
        for arm, rs in runs.items():
            found_in_summary = [summary.get(arm, {})[n] for n in names if summary.get(arm, {}).get(n) is not None]
            if found_in_summary:
                column[arm] = found_in_summary[0]
                continue
            found = [r.manifest[key] for r in rs if key in r.manifest]
            if found:
                numeric = all(isinstance(v, (int, float)) for v in found)
                column[arm] = float(np.mean(found)) if numeric else found[0]
        if column:
            out[key] = column
    return out
