"""``ctstore run PIPELINE.toml``: declarative experiments over reusable artifacts.

A pipeline file is TOML. ``[pipeline] experiment`` names the experiment module
(``ct_vs_random``, ``paper56_recursive``, ...); the other tables are its
settings: ``[corpus]`` (inputs relative to the TOML file, tokenizer options),
``[count]``, ``[k0]``, ``[model]``, ``[sft]``, ``[experiment]``. A
``[profiles.NAME]`` table holds overrides selected with ``--profile NAME``
(e.g. the paper-scale settings), and ``--set table.key=value`` overrides one
value (parsed as TOML, so ``--set sft.steps=2000`` is an int). The whole file,
its profiles and every ``--set`` are checked before any stage runs
(:mod:`ctstore.experiments.config`).

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

from .errors import CtstoreError, one_line
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


def _set(config: dict, assignment: str) -> str:
    """Apply ``--set table.key=value`` (the value parsed as TOML, a bare word as a string); returns the path."""
    key, sep, raw = assignment.partition("=")
    path = key.strip()
    if not sep or not path:
        raise CtstoreError(f"--set {one_line(assignment)}: expected TABLE.KEY=VALUE")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string
    *tables, leaf = path.split(".")
    if not all(tables) or not leaf:
        raise CtstoreError(f"--set {one_line(path)}: expected TABLE.KEY=VALUE")
    node = config
    for i, t in enumerate(tables):
        node = node.setdefault(t, {})
        if not isinstance(node, dict):
            raise CtstoreError(f"--set {one_line(path)}: {'.'.join(tables[:i + 1])} is a value, not a table")
    node[leaf] = value
    return path


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_pipeline(path: str, profile: str | None = None, overrides: list[str] = ()) -> dict:
    """The pipeline's settings (file, then ``--profile``, then each ``--set``), checked before anything runs.

    Every table, key and value is checked (:func:`ctstore.experiments.config.check_pipeline`), the other
    profiles too, and a mistake is one :class:`CtstoreError` line naming the file or the ``--set``.
    """
    from .experiments.config import check_pipeline

    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except FileNotFoundError:
        raise CtstoreError(f"{path}: pipeline file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise CtstoreError(f"{path}: invalid TOML ({exc})") from None
    profiles = config.pop("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(p, dict) for p in profiles.values()):
        raise CtstoreError(f"{path}: [profiles] must hold tables ([profiles.NAME])")
    if profile is not None and profile not in profiles:
        raise CtstoreError(f"{path}: no profile {profile!r} (has: {', '.join(profiles) or 'none'})")
    check_pipeline(config, path)  # the file's own tables first, then each profile over them
    for name, over in profiles.items():
        check_pipeline(_merge(config, over), f"{path} [profiles.{name}]")
    if profile is not None:
        config = _merge(config, profiles[profile])
    overridden = frozenset(_set(config, assignment) for assignment in overrides)
    config = check_pipeline(config, path, overridden)
    base = os.path.dirname(os.path.abspath(path))
    corpus = config["corpus"]
    corpus["inputs"] = [p if os.path.isabs(p) or "://" in p else os.path.normpath(os.path.join(base, p))
                        for p in corpus["inputs"]]
    return config


class Context:
    """What an experiment needs: the workspace, the execution options, and cached stage calls.

    Settings are checked with the same validators as the pipeline file (an experiment's
    own additions included). ``force`` recomputes each artifact once per pipeline run:
    the first request of a computation rebuilds it, later requests of the same one
    (an experiment asks for shared counts or a reference run several times) reuse it.
    """

    def __init__(self, ws, memory: str, scheduler: str | None, force: bool = False):
        self.ws, self.memory, self.scheduler, self.force = ws, memory, scheduler, force
        self._made: dict[str, object] = {}

    def _once(self, key: tuple, make):
        """``make(force)`` the first time ``key`` is asked for in this run, the same artifact after."""
        from .stage import canonical_json

        text = canonical_json(key)
        if text not in self._made:
            self._made[text] = make(self.force)
        return self._made[text]

    def tokens(self, corpus: dict):
        from .tokenize import TokenizeParams, tokenize_corpus

        if not corpus.get("inputs"):
            raise CtstoreError("pipeline: [corpus] inputs is empty")
        params = TokenizeParams.from_dict({k: v for k, v in corpus.items() if k != "inputs"}, "[corpus]")
        return self._once(("tokens", corpus["inputs"], params.to_dict()), lambda force: tokenize_corpus(
            corpus["inputs"], self.ws, params=params, force=force))

    def counts(self, tokens, count: dict):
        from .count import CountParams, count_cooccurrences

        params = CountParams.from_dict(count, "[count]")
        return self._once(("counts", tokens.fingerprint, params.to_dict()), lambda force: count_cooccurrences(
            tokens, self.ws, params=params, memory=self.memory, scheduler=self.scheduler, force=force))

    def embeddings(self, counts, k0: dict):
        from .embed import K0Params, embed_counts

        params = K0Params.from_dict(k0, "[k0]")
        return self._once(("embeddings", counts.fingerprint, params.to_dict()), lambda force: embed_counts(
            counts, self.ws, params=params, memory=self.memory, scheduler=self.scheduler, force=force))

    def model(self, embeddings, seed_params: dict):
        from .seed import SeedParams, seed_model

        params = SeedParams.from_dict(seed_params, "[model]")
        return self._once(("model", embeddings.fingerprint, params.to_dict()), lambda force: seed_model(
            embeddings, self.ws, params=params, force=force))

    def crystallized(self, counts, params: dict):
        from .crystallize import CrystallizeParams, crystallize_model

        checked = CrystallizeParams.from_dict(params, "[crystallize]")
        return self._once(("crystallize", counts.fingerprint, checked.to_dict()), lambda force: crystallize_model(
            counts, self.ws, params=checked, memory=self.memory, scheduler=self.scheduler, force=force))

    def run(self, model, tokens, sft: dict):
        from .sft import SftParams, train_model

        params = SftParams.from_dict(sft, "[sft]")
        return self._once(("run", model.fingerprint, tokens.fingerprint, params.to_dict()),
                          lambda force: train_model(model, tokens, self.ws, params=params, force=force))

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

        return self._once(("derive", fp), lambda force: build_artifact(self.ws, "model", fp, build, force=force)[0])


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
