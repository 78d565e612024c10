"""CT vs random: what the runs of each arm say (the summary, the paired per-seed claims, the extra columns).

Read by :mod:`ctstore.experiments.ct_vs_random` when it writes its report.
Every figure is paired per seed against the ``random`` run of the same seed
(see that module's docstring for the arms).
"""

from __future__ import annotations

import numpy as np

from .common import claims_section, eval_curve

__all__ = ["claim_measurements", "claims_table", "extra_columns", "first_step_reaching", "first_step_staying",
           "step_fraction",
           "summarize"]


def first_step_reaching(steps: list, ppl: list, target: float) -> int | None:
    """First evaluated step at which perplexity is at or below ``target`` (None: never; 0 is a step)."""
    return next((s for s, p in zip(steps, ppl) if p <= target), None)


def first_step_staying(steps: list, ppl: list, target: float) -> int | None:
    """First evaluated step from which every later evaluation is at or below ``target`` (None: never).

    Differs from :func:`first_step_reaching` for an arm that starts below the target, leaves it in
    the first SFT steps and comes back (bigram_init at a small embedding scale did)."""
    out = None
    for s, p in zip(steps, ppl):
        if p <= target:
            out = s if out is None else out
        else:
            out = None
    return out


def step_fraction(steps: list, ppl: list, target: float, schedule: int) -> tuple[float, bool]:
    """``(first step reaching target / schedule, censored)``: a run that never reaches it is censored at 1.0
    (it needs at least the whole schedule); a run at the target before training gives 0.0."""
    reached = first_step_reaching(steps, ppl, target)
    return (1.0, True) if reached is None else (reached / schedule, False)


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
                    row["step_fraction"], row["step_fraction_censored"] = step_fraction(
                        steps, ppl, base.manifest["final_val_ppl"], base.manifest["steps"])
                    stay = first_step_staying(steps, ppl, base.manifest["final_val_ppl"])
                    row["step_fraction_sustained"] = 1.0 if stay is None else stay / base.manifest["steps"]
                    # the converse question, not 0 by construction when the arm starts below random's final:
                    # how far random must train to reach this arm's step-0 perplexity (censored at 1)
                    r_steps, r_ppl = eval_curve(base, "val_ppl")
                    row["random_fraction_to_start"], row["random_fraction_to_start_censored"] = step_fraction(
                        r_steps, r_ppl, ppl[0], base.manifest["steps"])
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
             **run_throughput(rs), "per_seed": per_seed}
        if all("ppl_diff_vs_random" in p for p in per_seed):
            s["paired_ppl_diff_vs_random"] = [p["ppl_diff_vs_random"] for p in per_seed]
            s["paired_loss_diff_vs_random"] = [p["loss_diff_vs_random"] for p in per_seed]
        if per_seed and all("steps_to_random_final" in p for p in per_seed):
            reached = [p["steps_to_random_final"] for p in per_seed]
            s["steps_to_random_final"] = None if None in reached else float(np.mean(reached))
            s["step_saving_per_seed"] = [p["step_saving"] for p in per_seed]
            s["step_fraction"] = _interval([p["step_fraction"] for p in per_seed])
            s["step_fraction"]["censored"] = sum(p["step_fraction_censored"] for p in per_seed)
            s["step_fraction_sustained"] = _interval([p["step_fraction_sustained"] for p in per_seed])
            s["random_fraction_to_start"] = _interval([p["random_fraction_to_start"] for p in per_seed])
            s["random_fraction_to_start"]["censored"] = sum(p["random_fraction_to_start_censored"] for p in per_seed)
        if "paired_ppl_diff_vs_random" in s:
            s["paired_ppl_diff_interval"] = _interval(s["paired_ppl_diff_vs_random"])
        out[arm] = s
    if "random_long" in out:
        for arm in out:
            out[arm]["gap_to_long"] = out[arm]["ppl_mean"] - out["random_long"]["ppl_mean"]
    return out


def run_throughput(rs: list) -> dict:
    """Mean over seeds of each run's ``tokens_per_s``, ``model_flops_per_s`` and ``mfu``
    (:mod:`ctstore.sft.throughput`); a manifest written before they were recorded gets them from its
    training seconds, steps, batch size and evaluation block (the training block)."""
    tps, fps, mfu = [], [], []
    for r in rs:
        m = r.manifest
        secs = m.get("train_seconds") or 0.0
        tokens = m["steps"] * m["params"].get("batch_size", 0) * (m.get("eval_block") or 0)
        tps.append(m["tokens_per_s"] if m.get("tokens_per_s") is not None else (tokens / secs if secs else None))
        fps.append(m["model_flops_per_s"] if m.get("model_flops_per_s") is not None
                   else (m["flops"] / secs if secs else None))
        mfu.append(m.get("mfu"))
    m0 = rs[0].manifest
    return {"tokens_per_s": _mean(tps), "model_flops_per_s": _mean(fps), "mfu": _mean(mfu),
            "mfu_note": m0.get("mfu_note") or f"no known peak for device {m0.get('device', 'cpu')!r}",
            "device": m0.get("device")}


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


def _interval(values) -> dict:
    """``{"mean", "low", "high", "n"}``: the 95% t interval of per-seed values (low = high = None below 2 seeds)."""
    from ..claims import t_interval

    vals = [float(v) for v in values]
    if len(vals) < 2:
        return {"mean": vals[0] if vals else None, "low": None, "high": None, "n": len(vals)}
    mean, low, high = t_interval(vals)
    return {"mean": mean, "low": low, "high": high, "n": len(vals)}


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

    def fraction(a, b):
        return step_fraction(*eval_curve(a, "val_ppl"), final(b), b.manifest["steps"])

    tests = [  # claim, arm, baseline, per-seed value(arm run, baseline run) -> value or (value, censored), note
        ("p113.head_start", "k0", "random", lambda a, b: final(a) - final(b), "positive = k0 worse than random"),
        ("p113.gap_to_sgd", "k0", "random_long", lambda a, b: final(a) / final(b) - 1,
         "positive = k0 worse than random_long"),
        ("p51.crystallized_within_15", "crystallize", "random_long",
         lambda a, b: eval_curve(a, "val_ppl")[1][0] / final(b) - 1, "crystallize evaluated before SFT"),
        ("p113.steps_saved", "k0", "random", fraction, "1 = the whole schedule"),
    ]
    out = []
    for claim_id, arm, baseline, value, note in tests:
        if arm not in runs or baseline not in runs:
            out.append(missing(claim_id, f"needs arm {arm} and {baseline}" if baseline != "random"
                               else f"needs arm {arm}"))
            continue
        values, seeds = _paired_values(runs, arm, baseline, value)
        if not values:
            out.append(missing(claim_id, f"no seed ran both {arm} and {baseline}"))
            continue
        censored = None
        if values and isinstance(values[0], tuple):
            censored = [c for _, c in values]
            values = [v for v, _ in values]
            if any(censored):
                note += f"; {arm} never reached {baseline}'s final ppl in seed(s) " + \
                    ", ".join(str(s) for s, c in zip(seeds, censored) if c)
        out.append(paired(claim_id, values, note=f"{arm} vs {baseline}, seeds {seeds}" + (f"; {note}" if note else ""),
                          censored=censored))
    out.append(_layer_diversity(runs))
    out.append(_local_to_global(runs))
    return out


def _initial_model(run):
    """The model a run started from (its ``model`` input), loaded; None if the workspace lacks it."""
    from ..formats.model import load_model, model_dir

    ws = getattr(run, "workspace", None)
    art = ws.find("model", run.manifest.get("inputs", {}).get("model", "")) if ws is not None else None
    return None if art is None else load_model(model_dir(art))[0]


def _trained_model(run):
    import os

    from ..formats.model import load_model

    return load_model(os.path.join(run.path, "model"))[0]


def _layer_diversity(runs: dict):
    """Paper 113 §2.3/§5.1 on layer outputs: the k0-seeded model, with the random arm's model as the null."""
    from ..claims import missing, paired, with_null
    from ..seed import layer_output_cosines

    if "k0" not in runs:
        return missing("p113.layer_diversity", "needs arm k0")

    def measured(arm):
        vals = []
        for r in runs[arm]:
            model = _initial_model(r)
            if model is None:
                return None
            pairs = layer_output_cosines(model, _seed_of(r))["pairs"].values()
            vals.append(float(np.mean(np.abs(list(pairs)))))
        return vals

    ours = measured("k0")
    if ours is None:
        return missing("p113.layer_diversity", "the k0 arm's initial models are not in this workspace")
    m = paired("p113.layer_diversity", ours, note="k0-seeded models before SFT")
    null = measured("random") if "random" in runs else None
    return with_null(m, paired("p113.layer_diversity", null), "random init") if null else m


def _probe_batch(run, n_windows: int = 8):
    """``n_windows`` of the run's own evaluation windows (model ids), for attention statistics."""
    import os

    import torch

    from ..formats.model import load_model
    from ..sft.data import TokenSplit
    from ..sft.eval import validation_windows

    ws = run.workspace
    p = run.manifest["params"]
    tokens = ws.find("tokens", run.manifest["inputs"]["tokens"])
    split = TokenSplit(tokens, p["val_fraction"],
                       ws.scratch_dir("tokens", f"{tokens.fingerprint}-val{p['val_fraction']}"))
    T = run.manifest.get("eval_block") or 64
    windows = validation_windows(len(split.arrays["val"]), T, p.get("eval_tokens"))
    pick = np.linspace(0, len(windows) - 1, min(n_windows, len(windows))).round().astype(int)
    _m, vocab_map, _raw = load_model(os.path.join(run.path, "model"))
    rows = []
    for i in pick:
        s, n = windows[i]
        chunk = np.asarray(split.arrays["val"][s: s + T], dtype=np.int64)
        if len(chunk) == T:
            rows.append(vocab_map[chunk] if vocab_map is not None else chunk)
    return torch.from_numpy(np.stack(rows))


def _local_to_global(runs: dict):
    """Paper 51: last layer's mean attention distance minus the first's, k0 after SFT; null: random after SFT."""
    from ..analysis.attention import attention_distances
    from ..claims import missing, paired, with_null

    if "k0" not in runs:
        return missing("p51.local_to_global", "needs arm k0")
    if any(getattr(r, "workspace", None) is None for r in runs["k0"]):
        return missing("p51.local_to_global", "the k0 runs' models are not in a workspace")

    def measured(arm):
        vals = []
        for r in runs[arm]:
            d = attention_distances(_trained_model(r), _probe_batch(r))
            vals.append(d[-1] - d[0])
        return vals

    try:
        ours = measured("k0")
        null = measured("random") if "random" in runs else None
    except (KeyError, AttributeError, OSError, ValueError) as exc:
        return missing("p51.local_to_global", f"attention not measurable here ({type(exc).__name__})")
    m = paired("p51.local_to_global", ours, note="k0 after SFT; positive = last layer attends further back")
    return with_null(m, paired("p51.local_to_global", null), "random init after SFT") if null else m


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
