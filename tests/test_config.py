"""Configs are checked before any work (issues 17 §2, 20): one validator per field for flags, TOML and --set."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctstore import stages
from ctstore.count import CountParams
from ctstore.errors import CtstoreError
from ctstore.experiments.config import EXPERIMENT_CONFIGS
from ctstore.pipeline import EXPERIMENTS, Context, load_pipeline
from ctstore.sft import SftParams
from ctstore.stage import field_checks, params_from_dict

QUICKSTART = (Path(__file__).resolve().parent.parent / "pipelines" / "quickstart.toml").read_text()


def _pipeline(tmp_path, old: str = "", new: str = "", extra: str = "") -> str:
    """quickstart.toml with ``old`` replaced by ``new`` (it must occur) and ``extra`` appended."""
    assert old in QUICKSTART
    path = tmp_path / "p.toml"
    path.write_text(QUICKSTART.replace(old, new, 1) + extra)
    return str(path)


@pytest.mark.parametrize("old, new, extra, message", [
    ("steps = 150", "stpes = 150", "", "[sft] stpes: unknown key (did you mean steps?)"),
    ("lags = 10", "lgas = 10", "", "[count] lgas: unknown key (did you mean lags?)"),
    ("dim = 64", "dimm = 64", "", "[k0] dimm: unknown key (did you mean dim?)"),
    ("[sft]\n", "[sftt]\n", "", "[sftt]: unknown table for experiment ct_vs_random (did you mean sft?)"),
    ("seeds = [0]", "seed = [0]", "", "[experiment] seed: unknown key (did you mean seeds?)"),
    ("", "", "\n[sft.extra]\nx = 1\n", "[sft] extra: unknown key"),  # a nested table
    ("dim = 64", "dim = { d = 64 }", "", "[k0] dim: must be a positive integer, not {'d': 64}"),
    ("seeds = [0]", "seeds = [-1]", "", "[experiment] seeds: must be a non-negative integer, not -1"),
    ("seeds = [0]", "seeds = [0, 0]", "", "[experiment] seeds: must not repeat an item"),
    ("lr = 0.002", "lr = 0.002\nseed = -3", "", "[sft] seed: must be a non-negative integer, not -3"),
    ("seeds = [0]", "seeds = []", "", "[experiment] seeds: must be a non-empty list"),  # published an empty report
    ("lags = 10", "lags = true", "", "[count] lags: must be an integer in [1, 64], not True"),  # was lags=1
    ("steps = 150", "steps = 99999999999999999999", "", "[sft] steps: must be a positive integer (at most"),
    ("block_size = 64", "block_size = 100000000", "",
     "[sft] block_size: 100000000 exceeds the context of model config 'tiny' (64 tokens)"),
    ('arms = ["random",', 'arms = ["randon",', "", "[experiment] arms: unknown arm 'randon' (did you mean random?)"),
    ('experiment = "ct_vs_random"', 'experiment = "ct_vs_randon"', "",
     "[pipeline] experiment: unknown experiment 'ct_vs_randon' (did you mean ct_vs_random?)"),
    ("", "", '\n[profiles.fast]\nsft = { stepz = 5 }\n', "[profiles.fast]: [sft] stepz: unknown key"),
    ("[pipeline]", "steps = 5\n[pipeline]", "", ": steps: a setting must be in a table (TABLE.KEY) (did you mean "
                                                 "sft.steps?)"),
])
def test_a_mistake_in_the_pipeline_file_is_one_line_naming_the_table_and_key(tmp_path, old, new, extra, message):
    path = _pipeline(tmp_path, old, new, extra)
    with pytest.raises(CtstoreError) as err:
        load_pipeline(path)
    assert str(err.value).startswith(path) and message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("assignment, message", [
    ("sft.steps=abc", "--set sft.steps: must be a positive integer, not 'abc'"),  # was TypeError: '<' not supported
    ("sft.steps=1.5", "--set sft.steps: must be a positive integer, not 1.5"),  # ran 2 steps, reported 1.5
    ("sft.stpes=150", "--set sft.stpes: unknown key (did you mean steps?)"),
    ("sftt.steps=10", "--set sftt: unknown table for experiment ct_vs_random (did you mean sft?)"),
    ("steps=5", "--set steps: a setting must be in a table (TABLE.KEY) (did you mean sft.steps?)"),
    ("nosuch.key=1", "--set nosuch: unknown table"),
    ("experiment.seeds=[]", "--set experiment.seeds: must be a non-empty list"),
    ("count.lags=true", "--set count.lags: must be an integer in [1, 64], not True"),
    ("sft.steps.x=1", "--set sft.steps.x: sft.steps is a value, not a table"),
    ("sft.block_size=100000000", "--set sft.block_size: 100000000 exceeds the context"),
    ("=3", "--set =3: expected TABLE.KEY=VALUE"),
])
def test_a_mistake_in_set_is_one_line_naming_the_set(assignment, message):
    with pytest.raises(CtstoreError) as err:
        load_pipeline(str(Path(__file__).resolve().parent.parent / "pipelines" / "quickstart.toml"), None,
                      [assignment])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_checked_settings_are_typed_and_carry_the_experiments_defaults(tmp_path):
    config = load_pipeline(_pipeline(tmp_path, "lr = 0.002", "lr = 1"), None, ["sft.steps=7"])
    assert config["sft"]["steps"] == 7 and isinstance(config["sft"]["lr"], float)
    assert config["experiment"] == {"arms": ["random", "k0", "svd", "svd_embeddings"], "seeds": [0],
                                    "long_factor": 4, "recipe": "rotated"}
    assert set(EXPERIMENT_CONFIGS) == set(EXPERIMENTS)
    for cls in EXPERIMENT_CONFIGS.values():  # every experiment's defaults pass its own checks
        assert cls.from_dict(cls().to_dict(), "[experiment]") == cls()


def test_flags_files_and_python_share_one_validator_per_field():
    """The argparse type of every generated flag is the field's validator; __post_init__ runs it too."""
    from ctstore.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name in stages.REGISTRY:
        stage = stages.stage(name)
        if stage is None or stage.params is None:
            continue
        actions = {a.dest: a for a in sub[name]._actions}
        for f in dataclasses.fields(stage.params):
            if f.metadata.get("cli") and actions[f.name].type is not None:
                assert actions[f.name].type is field_checks(stage.params)[f.name], (name, f.name)
    with pytest.raises(CtstoreError, match=r"^--lags must be an integer in \[1, 64\], not True$"):
        CountParams(lags=True)
    with pytest.raises(CtstoreError, match="^--steps must be a positive integer, not 1.5$"):
        SftParams(steps=1.5)
    assert SftParams(lr=1, freeze=["a"]) == SftParams(lr=1.0, freeze=("a",))
    with pytest.raises(CtstoreError, match=r"^\[count\]: must be a table"):
        params_from_dict(CountParams, [1], "[count]")


def test_sft_refuses_a_block_size_beyond_the_models_context_before_work(ws):
    """``sft --block-size 100000000`` trained with 64 and recorded 100000000."""
    import torch

    from conftest import write_tokens
    from ctstore.formats.model import save_model
    from ctstore.model import PhotonicGPT, get_config
    from ctstore.sft import train_model
    from ctstore.workspace import build_artifact

    tokens = write_tokens(ws, [list(range(40))] * 20, n_vocab=64)
    torch.manual_seed(0)

    def build(path):
        save_model(PhotonicGPT(get_config("tiny", vocab_size=64)), path)
        return {"format_version": 2, "params": {}, "inputs": {}, "tokenizer": "test"}

    model = build_artifact(ws, "model", "0" * 20, build)[0]
    with pytest.raises(CtstoreError, match="^sft: --block-size 100000000 exceeds the context of model 0+ "
                                           r"\(64 tokens\)$"):
        train_model(model, tokens, ws, params=SftParams(block_size=100_000_000, steps=1))
    assert not os.path.exists(os.path.join(ws.root, "run"))


def test_run_force_reaches_every_stage_once_per_run(monkeypatch):
    """``ctstore run --force`` recomputed only the report: Context.force never reached the stages."""
    import ctstore.count
    import ctstore.embed
    import ctstore.seed
    import ctstore.sft
    import ctstore.tokenize

    calls = []

    class Made:
        def __init__(self, name):
            self.fingerprint = name

    def fake(name):
        def stage(*args, force=False, **kwargs):
            calls.append((name, force))
            return Made(name)
        return stage

    for module, attr in [(ctstore.tokenize, "tokenize_corpus"), (ctstore.count, "count_cooccurrences"),
                         (ctstore.embed, "embed_counts"), (ctstore.seed, "seed_model"), (ctstore.sft, "train_model")]:
        monkeypatch.setattr(module, attr, fake(attr))
    for force in (True, False):
        calls.clear()
        ctx = Context(None, "1GB", None, force=force)
        for _ in range(2):  # an experiment asks for the same artifacts again: built (and forced) once
            tokens = ctx.tokens({"inputs": ["x.txt"]})
            counts = ctx.counts(tokens, {"lags": 2})
            model = ctx.model(ctx.embeddings(counts, {"dim": 8}), {"seed": 1})
            ctx.run(model, tokens, {"steps": 3, "freeze": ["a"]})
        assert calls == [(name, force) for name in ("tokenize_corpus", "count_cooccurrences", "embed_counts",
                                                    "seed_model", "train_model")]
    with pytest.raises(CtstoreError, match=r"^\[sft\] stpes: unknown key"):
        Context(None, "1GB", None).run(Made("m"), Made("t"), {"stpes": 3})


def test_cli_run_refuses_a_bad_pipeline_in_one_line_before_any_work(tmp_path):
    ws = tmp_path / "ws"
    path = _pipeline(tmp_path, "steps = 150", "stpes = 150")
    proc = subprocess.run([sys.executable, "-m", "ctstore.cli", "run", path, "--set", "sft.eval_every=5",
                           "-w", str(ws), "--force"], capture_output=True, text=True,
                          env={**os.environ, "CTSTORE_NO_PROGRESS": "1"})
    assert proc.returncode == 2
    assert proc.stderr == f"ctstore: error: {path}: [sft] stpes: unknown key (did you mean steps?)\n"
    assert not os.path.exists(ws / "tokens") and not os.path.exists(ws / "report")
    assert proc.stdout == ""
