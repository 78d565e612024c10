"""``ctstore run PIPELINE.toml``: declarative experiments over reusable artifacts.

A pipeline file is TOML. ``[pipeline] experiment`` names the experiment module
(``ct_vs_random``, ``paper56_recursive``, ...); the other tables are its
settings: ``[corpus]`` (inputs relative to the TOML file, tokenizer options),
``[count]``, ``[k0]``, ``[model]``, ``[sft]``, ``[experiment]``. A
``[profiles.NAME]`` table holds overrides selected with ``--profile NAME``
(e.g. the paper-scale settings), and ``--set table.key=value`` overrides one
value (parsed as TOML, so ``--set sft.steps=2000`` is an int).

Every stage goes through the workspace, so rerunning a pipeline, or another
pipeline on the same corpus, reuses tokens, counts, embeddings, models and runs.
The experiment writes ``report.md``, ``results.json`` and PNG plots into a
``report`` artifact whose fingerprint covers the resolved settings and inputs.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
import tomllib

from .errors import CtstoreError
from .log import log
from .stage import Input, Option, Stage

__all__ = ["load_pipeline", "run_pipeline", "Context"]

EXPERIMENTS = {
    "ct_vs_random": "ctstore.experiments.ct_vs_random",
    "paper56_recursive": "ctstore.experiments.paper56_recursive",
    "paper63_layer_crystallization": "ctstore.experiments.paper63_layer_crystallization",
    "paper66_scaling": "ctstore.experiments.paper66_scaling",
    "paper113_predictions": "ctstore.experiments.paper113_predictions",
}


def _set(config: dict, assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise CtstoreError(f"--set {assignment!r}: expected table.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string
    *tables, leaf = key.strip().split(".")
    node = config
    for t in tables:
        node = node.setdefault(t, {})
    node[leaf] = value


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_pipeline(path: str, profile: str | None = None, overrides: list[str] = ()) -> dict:
    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except FileNotFoundError:
        raise CtstoreError(f"{path}: pipeline file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise CtstoreError(f"{path}: invalid TOML ({exc})") from None
    profiles = config.pop("profiles", {})
    if profile is not None:
        if profile not in profiles:
            raise CtstoreError(f"{path}: no profile {profile!r} (has: {', '.join(profiles) or 'none'})")
        config = _merge(config, profiles[profile])
    for assignment in overrides:
        _set(config, assignment)
    experiment = config.get("pipeline", {}).get("experiment")
    if experiment not in EXPERIMENTS:
        raise CtstoreError(f"{path}: [pipeline] experiment must be one of {', '.join(EXPERIMENTS)}, not {experiment!r}")
    base = os.path.dirname(os.path.abspath(path))
    corpus = config.setdefault("corpus", {})
    corpus["inputs"] = [p if os.path.isabs(p) or "://" in p else os.path.normpath(os.path.join(base, p))
                        for p in corpus.get("inputs", [])]
    return config


class Context:
    """What an experiment needs: the workspace, the execution options, and cached stage calls."""

    def __init__(self, ws, memory: str, scheduler: str | None, force: bool = False):
        self.ws, self.memory, self.scheduler, self.force = ws, memory, scheduler, force

    def tokens(self, corpus: dict):
        from .tokenize import TokenizeParams, tokenize_corpus

        keys = {k: corpus[k] for k in ("encoding", "split", "field", "column", "strict") if k in corpus}
        if not corpus.get("inputs"):
            raise CtstoreError("pipeline: [corpus] inputs is empty")
        return tokenize_corpus(corpus["inputs"], self.ws, params=TokenizeParams(**keys))

    def counts(self, tokens, count: dict):
        from .count import CountParams, count_cooccurrences

        return count_cooccurrences(tokens, self.ws, params=CountParams(**count), memory=self.memory,
                                   scheduler=self.scheduler)

    def embeddings(self, counts, k0: dict):
        from .embed import K0Params, embed_counts

        return embed_counts(counts, self.ws, params=K0Params(**k0), memory=self.memory, scheduler=self.scheduler)

    def model(self, embeddings, seed_params: dict):
        from .seed import SeedParams, seed_model

        return seed_model(embeddings, self.ws, params=SeedParams(**seed_params))

    def crystallized(self, counts, params: dict):
        from .crystallize import CrystallizeParams, crystallize_model

        params = {**params, "betas": tuple(params.get("betas", (1.0, 0.5, 0.25)))}
        return crystallize_model(counts, self.ws, params=CrystallizeParams(**params), memory=self.memory,
                                 scheduler=self.scheduler)

    def run(self, model, tokens, sft: dict):
        from .sft import SftParams, train_model

        sft = {**sft, "freeze": tuple(sft.get("freeze", ()))}
        return train_model(model, tokens, self.ws, params=SftParams(**sft))

    def derived_model(self, model, label: str, transform):
        """A model artifact made from another by ``transform(torch_model)`` (in place), cached by label."""
        from .formats.model import load_model, model_dir, save_model
        from .stage import fingerprint
        from .workspace import build_artifact

        fp = fingerprint("derive", 1, {"label": label}, {"model": model.fingerprint})

        def build(path: str) -> dict:
            torch_model, vocab_map, raw = load_model(model_dir(model))
            transform(torch_model)
            save_model(torch_model, self.ws.artifact_location("model", fp), vocab_map, {k: v for k, v in raw.items()
                                                      if k not in torch_model.config.to_dict()})
            return {"format_version": 1, "params": {"derived": label}, "inputs": {"model": model.fingerprint},
                    "tokenizer": model.manifest.get("tokenizer"), "init": f"{model.manifest.get('init')}+{label}"}

        return build_artifact(self.ws, "model", fp, build)[0]


def run_pipeline(path: str, ws, *, profile: str | None = None, overrides: list[str] = (), memory: str = "4GB",
                 scheduler: str | None = None, force: bool = False):
    config = load_pipeline(path, profile, overrides)
    name = config["pipeline"]["experiment"]
    log(f"pipeline {os.path.basename(path)}: experiment {name}"
        + (f", profile {profile}" if profile else ""))
    module = importlib.import_module(EXPERIMENTS[name])
    return module.run(config, Context(ws, memory, scheduler, force))


def _run_stage(ws, inputs, params, opts):
    artifact = run_pipeline(inputs["pipeline"], ws, profile=opts["profile"], overrides=opts["overrides"],
                            memory=opts["memory"], scheduler=opts["scheduler"], force=opts["force"])
    print(f"report: {os.path.join(artifact.path, 'report.md')}", file=sys.stderr)
    return artifact


STAGE = Stage(
    name="run", kind="report", params=None, run=_run_stage,
    help="run a declarative experiment pipeline (TOML) and write its report",
    inputs=(Input("pipeline", None, "path to a pipelines/*.toml file"),),
    options=(Option("--profile", "apply the [profiles.NAME] overrides (e.g. paper)"),
             Option("--set", "override one setting, parsed as TOML (repeatable)", dest="overrides", repeat=True,
                    metavar="TABLE.KEY=VALUE")),
)
