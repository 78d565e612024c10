"""Each experiment's settings as a dataclass, and the check of a whole pipeline file before any work.

A pipeline (``pipelines/*.toml``) has a fixed set of tables: ``[pipeline]``,
``[corpus]`` (``inputs`` plus the tokenize parameters), ``[count]``, ``[k0]``,
``[model]`` (seed), ``[sft]``, ``[crystallize]`` (``ct_vs_random`` only) and
``[experiment]``, whose keys are the experiment's own dataclass below. The
stage tables are the stages' params dataclasses, checked by the same field
validators as their command-line flags (:func:`ctstore.stage.params_from_dict`).

:func:`check_pipeline` runs every check on the resolved settings (file, profile
and ``--set``) and on each profile, so an unknown table or key, a value of the
wrong type or out of range fails in one line naming where it was written
(``pipelines/x.toml: [sft] stpes: unknown key (did you mean steps?)``, or
``--set sft.steps: ...``) before tokenize starts. The checked ``[experiment]``
table carries every setting (defaults included), so the experiment modules and
the report's fingerprint see the values that ran.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from ..errors import CtstoreError, one_line
from ..stage import Params, did_you_mean, param, params_from_dict
from ..units import NON_NEGATIVE, POSITIVE, number_flag

__all__ = ["EXPERIMENT_CONFIGS", "CtVsRandomConfig", "Paper113Config", "Paper56Config", "Paper63Config",
           "Paper66Config", "check_pipeline"]

KERNELS = ("circulant", "none", "ppmi")


def _list_of(check: Callable, what: str, *, distinct: bool = False) -> Callable:
    """A validator of a non-empty list whose items each pass ``check``; a tuple is stored."""

    def convert(value):
        if not isinstance(value, (list, tuple)) or not value:
            raise argparse.ArgumentTypeError(f"must be a non-empty list of {what}, not {one_line(repr(value))}")
        items = tuple(check(v) for v in value)
        if distinct and len(set(items)) != len(items):
            raise argparse.ArgumentTypeError(f"must not repeat an item, not {one_line(repr(value))}")
        return items

    return convert


def _name(value):
    if not isinstance(value, str) or not value:
        raise argparse.ArgumentTypeError(f"must be a name, not {one_line(repr(value))}")
    return value


def _arm(value):
    from .ct_vs_random import ARMS

    if value not in ARMS:
        raise argparse.ArgumentTypeError(f"unknown arm {one_line(repr(value))}"
                                         f"{did_you_mean(value, ARMS) if isinstance(value, str) else ''}")
    return value


SEEDS = _list_of(NON_NEGATIVE, "non-negative integer seeds", distinct=True)


@dataclass(frozen=True)
class CtVsRandomConfig(Params):
    arms: tuple | None = param(None, "arms to run (default: every arm of ct_vs_random.ARMS)",
                               parse=_list_of(_arm, "arm names", distinct=True))
    seeds: tuple = param((0, 1, 2), "model, SFT and k0 seeds", parse=SEEDS)
    long_factor: int = param(4, "random_long trains this many times the steps", parse=POSITIVE)
    recipe: str = param("rotated", "seeding recipe of the spectral arms", choices=("rotated", "literal"))


@dataclass(frozen=True)
class Paper113Config(Params):
    seeds: tuple = param((0,), "model and SFT seeds", parse=SEEDS)
    size_seeds: tuple | None = param(None, "seeds of the size sweep (default: the first seed)", parse=SEEDS)
    long_factor: int = param(4, "the random reference trains this many times the steps", parse=POSITIVE)
    v_effs: tuple = param((512, 2048, 4096), "V_eff sweep", parse=_list_of(number_flag(int, 2), "integers >= 2"))
    hierarchical_v_eff: int = param(2048, "V_eff of the hierarchical-vs-dense comparison",
                                    parse=number_flag(int, 2))
    sizes: tuple = param(("tiny", "small"), "model configs of the size sweep", parse=_list_of(_name, "config names"))
    target_gap: float = param(0.03, "a 'constant gap' is within this fraction of the longer random run",
                              parse=number_flag(float, 0, low_open=True))


@dataclass(frozen=True)
class Paper56Config(Params):
    K: int = param(4, "Gaussians per row of the L1 fit", parse=POSITIVE)
    K2: int = param(4, "Gaussians of the L2 fit", parse=POSITIVE)
    ridge: float = param(1e-5, "amplitude penalty of the fits", parse=number_flag(float, 0))
    kernel: str = param("circulant", "k0 kernel", choices=KERNELS)
    seeds: tuple = param((0,), "model and SFT seeds", parse=SEEDS)


@dataclass(frozen=True)
class Paper63Config(Params):
    kernel: str = param("none", "k0 kernel", choices=KERNELS)
    seeds: tuple = param((0,), "randomized SVD, model and SFT seeds", parse=SEEDS)
    layers: tuple | None = param(None, "layers whose c_proj is frozen (default: every layer)",
                                 parse=_list_of(NON_NEGATIVE, "layer numbers", distinct=True))


@dataclass(frozen=True)
class Paper66Config(Params):
    kernel: str = param("none", "k0 kernel", choices=KERNELS)
    widths: tuple = param((64, 128, 256), "model widths (k0 --dim)", parse=_list_of(POSITIVE, "widths"))
    vocab_sizes: tuple = param((256, 512, 1024, 2048), "vocabulary sizes of the PR sweep",
                               parse=_list_of(POSITIVE, "sizes"))
    seeds: tuple = param((0,), "randomized SVD, model and SFT seeds", parse=SEEDS)


EXPERIMENT_CONFIGS = {
    "ct_vs_random": CtVsRandomConfig,
    "paper113_predictions": Paper113Config,
    "paper56_recursive": Paper56Config,
    "paper63_layer_crystallization": Paper63Config,
    "paper66_scaling": Paper66Config,
}


def _stage_tables(experiment: str) -> dict[str, type]:
    """The stage tables a pipeline of ``experiment`` may hold and their params classes (imported here: they
    live beside the stages' code)."""
    from ..count import CountParams
    from ..crystallize import CrystallizeParams
    from ..embed import K0Params
    from ..seed import SeedParams
    from ..sft import SftParams

    tables = {"count": CountParams, "k0": K0Params, "model": SeedParams, "sft": SftParams}
    if experiment == "ct_vs_random":
        tables["crystallize"] = CrystallizeParams
    return tables


def _check_corpus(corpus, name: Callable[[str], str]) -> dict:
    from ..tokenize import TokenizeParams

    if not isinstance(corpus, dict):
        raise CtstoreError(f"{name('').strip()}: must be a table, not {one_line(repr(corpus))}")
    rest = {k: v for k, v in corpus.items() if k != "inputs"}
    inputs = corpus.get("inputs")
    if "inputs" not in corpus:
        raise CtstoreError(f"{name('inputs')}: missing (a list of files, directories or globs)")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(p, str) and p for p in inputs):
        raise CtstoreError(f"{name('inputs')}: must be a non-empty list of paths, not {one_line(repr(inputs))}")
    params = params_from_dict(TokenizeParams, rest, name)
    return {"inputs": inputs, **{k: getattr(params, k) for k in rest}}


def _model_context(config: str, name: str) -> int:
    from ..model import get_config

    try:
        return get_config(config).block_size
    except CtstoreError as exc:
        raise CtstoreError(f"{name}: {exc}") from None


def _check_across_tables(config: dict, experiment: str, name: Callable[[str, str], str]) -> None:
    """What no single table can check: SFT's window against each model's context, crystallize's vocabulary."""
    model, sft, exp = config.get("model", {}), config.get("sft", {}), config["experiment"]
    configs = [model.get("config", "tiny")] + list(exp.get("sizes", ()) if experiment == "paper113_predictions"
                                                  else ())
    for cfg in configs:
        context = _model_context(cfg, name("model", "config"))
        if sft.get("block_size") is not None and sft["block_size"] > context:
            raise CtstoreError(f"{name('sft', 'block_size')}: {sft['block_size']} exceeds the context of model "
                               f"config {cfg!r} ({context} tokens)")
    if experiment == "ct_vs_random" and "crystallize" in exp.get("arms", ("crystallize",)) \
            and not isinstance(model.get("vocab", 4096), int):
        raise CtstoreError(f"{name('model', 'vocab')}: the crystallize arm needs a number, "
                           f"not {one_line(repr(model.get('vocab')))}")


def check_pipeline(config: dict, where: str, overridden: frozenset = frozenset()) -> dict:
    """The pipeline settings checked and normalised, or a one-line :class:`CtstoreError` naming the place.

    ``where`` names the file; ``overridden`` holds the ``table.key`` paths set with
    ``--set`` (an error in one of them names the ``--set``). Returns a new dict:
    stage tables with their values checked (the keys as written), ``[experiment]``
    with every setting of the experiment's dataclass.
    """

    def name(table: str, key: str = "") -> str:
        path = f"{table}.{key}" if key else table
        if any(o == path or o.startswith(path + ".") for o in overridden):
            return f"--set {path}"
        return f"{where}: [{table}]" + (f" {key}" if key else "")

    pipeline = config.get("pipeline")
    if not isinstance(pipeline, dict):
        raise CtstoreError(f"{where}: no [pipeline] table (it names the experiment: experiment = \"ct_vs_random\")")
    experiment = pipeline.get("experiment")
    if experiment not in EXPERIMENT_CONFIGS:
        hint = did_you_mean(experiment, EXPERIMENT_CONFIGS) if isinstance(experiment, str) else \
            f" (known: {', '.join(EXPERIMENT_CONFIGS)})"
        raise CtstoreError(f"{name('pipeline', 'experiment')}: unknown experiment {one_line(repr(experiment))}{hint}")
    for key in pipeline:
        if key != "experiment":
            raise CtstoreError(f"{name('pipeline', key)}: unknown key{did_you_mean(key, ['experiment'])}")
    stage_tables = _stage_tables(experiment)
    known = {"pipeline", "corpus", "experiment", *stage_tables}
    out = {"pipeline": dict(pipeline)}
    for table, value in config.items():
        if table == "pipeline":
            continue
        if table not in known:
            if not isinstance(value, dict):
                owners = [t for t, cls in stage_tables.items() if table in getattr(cls, "__dataclass_fields__", {})]
                hint = f" (did you mean {owners[0]}.{table}?)" if owners else ""
                place = name(table) if name(table).startswith("--set") else f"{where}: {table}"
                raise CtstoreError(f"{place}: a setting must be in a table (TABLE.KEY){hint}")
            raise CtstoreError(f"{name(table)}: unknown table for experiment {experiment}"
                               f"{did_you_mean(table, known)}")
        key_name = lambda key, t=table: name(t, key)  # noqa: E731 (the place of each key of this table)
        if table == "corpus":
            out[table] = _check_corpus(value, key_name)
        elif table == "experiment":
            checked = params_from_dict(EXPERIMENT_CONFIGS[experiment], value, key_name)
            out[table] = {k: v for k, v in checked.to_dict().items() if v is not None}
        else:
            params = params_from_dict(stage_tables[table], value, key_name)
            out[table] = {k: getattr(params, k) for k in value}
    if "corpus" not in out:
        raise CtstoreError(f"{where}: no [corpus] table (inputs = [\"path\", ...])")
    if "experiment" not in out:
        out["experiment"] = {k: v for k, v in EXPERIMENT_CONFIGS[experiment]().to_dict().items() if v is not None}
    _check_across_tables(out, experiment, name)
    return out
