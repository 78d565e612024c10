"""The stage registry: fingerprints from non-default parameters, a CLI generated from params dataclasses."""

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from ctstore import stages
from ctstore.cli import build_parser
from ctstore.count import CountParams
from ctstore.stage import Stage, fingerprint, non_default, param
from ctstore.synth import SynthParams


def _reference(stage, version, params: dict, inputs: dict, format_version=None) -> str:
    """The fingerprint rule written out independently: sha256 of sorted compact JSON, 20 hex chars."""
    payload = {"stage": stage, "code_version": version, "params": params, "inputs": inputs}
    if format_version is not None:
        payload["format_version"] = format_version
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def test_fingerprint_covers_every_parameter_value_defaults_included():
    p = CountParams(lags=3)
    assert non_default(p) == {"lags": 3}
    assert fingerprint("count", 1, p, {"tokens": "abc"}) == _reference(
        "count", 1, {"lags": 3, "val_fraction": None}, {"tokens": "abc"})
    assert fingerprint("count", 1, CountParams(), {"tokens": "abc"}) == _reference(
        "count", 1, {"lags": 10, "val_fraction": None}, {"tokens": "abc"})
    count = stages.stage("count")
    assert count.fingerprint(p, {"tokens": "abc"}) == _reference(
        "count", count.code_version, {"lags": 3, "val_fraction": None}, {"tokens": "abc"}, count.format_version)


def test_a_changed_default_is_a_new_artifact_and_the_same_values_the_same_one():
    # the same stage one release later with another default: reusing the old key would give lags=10 counts
    Later = dataclasses.make_dataclass(
        "CountParams", [("lags", int, param(5)), ("val_fraction", float, param(None))], frozen=True)
    assert fingerprint("count", 1, Later(), {"tokens": "t"}) != fingerprint("count", 1, CountParams(), {"tokens": "t"})
    # what was computed is what counts: lags=5 is one artifact whichever default it came from
    assert fingerprint("count", 1, Later(), {"tokens": "t"}) == fingerprint("count", 1, CountParams(lags=5),
                                                                             {"tokens": "t"})
    # a new parameter changes the key once (its stage recomputes); a stage, input or code version: another key
    Added = dataclasses.make_dataclass(
        "CountParams", [("lags", int, param(10)), ("val_fraction", float, param(None)), ("knob", str, param("off"))],
        frozen=True)
    keys = {fingerprint("count", 1, CountParams(), {"tokens": "t"}),
            fingerprint("count", 1, Added(), {"tokens": "t"}),
            fingerprint("count", 2, CountParams(), {"tokens": "t"}),
            fingerprint("synth", 1, CountParams(), {"tokens": "t"}),
            fingerprint("count", 1, CountParams(), {"tokens": "u"}),
            fingerprint("count", 1, CountParams(), {"tokens": "t"}, format_version=2)}
    assert len(keys) == 6


def test_code_version_is_the_cache_key_apart_from_the_format_version():
    """A bug fix bumps code_version: a new key, and the layout its readers accept is unchanged."""
    from ctstore.formats import READABLE_VERSIONS

    root = os.path.join(os.path.dirname(__file__), "..", "ctstore")
    for stage in _registered():
        if stage.kind is None:
            continue
        fixed = dataclasses.replace(stage, code_version=stage.code_version + 1)
        params = stage.params() if stage.params else {}
        assert fixed.fingerprint(params, {}) != stage.fingerprint(params, {}), stage.name
        assert fixed.format_version in READABLE_VERSIONS[stage.kind], stage.name
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(dirpath, name)) as f:
                    assert "code_version=FORMAT_VERSION" not in f.read(), name


def test_artifacts_of_an_older_fingerprint_rule_stay_readable_by_fingerprint(ws):
    """Issue 17: a new rule gives new keys; an artifact published under an old key is still found and read."""
    from conftest import write_tokens
    from ctstore.count import count_cooccurrences
    from ctstore.formats.counts import CountStore

    tokens = write_tokens(ws, [[1, 2, 3, 4, 5, 6] * 5] * 4, n_vocab=30)
    new = count_cooccurrences(tokens, ws, params=CountParams(lags=2), scheduler="sync")
    old_fp = _reference("count", 1, {"lags": 2}, {"tokens": tokens.fingerprint})  # the issue-11 rule
    old_dir = os.path.join(os.path.dirname(new.path), old_fp)
    os.rename(new.path, old_dir)
    with open(os.path.join(old_dir, "manifest.json")) as f:
        manifest = json.load(f)
    with open(os.path.join(old_dir, "manifest.json"), "w") as f:
        json.dump({**manifest, "fingerprint": old_fp}, f)
    old = ws.get(old_fp[:8], kind="counts")
    assert old.fingerprint == old_fp and CountStore.from_artifact(old).matrix(1).sum() == 4 * 29
    again = count_cooccurrences(tokens, ws, params=CountParams(lags=2), scheduler="sync")
    assert again.fingerprint == new.fingerprint != old_fp  # recomputed once under the new key


def test_tuple_parameters_fingerprint_as_lists_and_defaults_compare_by_value():
    P = dataclasses.make_dataclass("P", [("xs", tuple, param((1, 2)))], frozen=True)
    assert non_default(P()) == {} and non_default(P(xs=(1, 2))) == {}
    assert non_default(P(xs=(3,))) == {"xs": [3]}
    assert fingerprint("p", 1, P(xs=(3,)), {}) == _reference("p", 1, {"xs": [3]}, {})


def _registered() -> list[Stage]:
    return [s for s in (stages.stage(name) for name in stages.REGISTRY) if s is not None]


def test_every_parameter_of_every_registered_stage_has_a_flag_with_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    assert len(_registered()) >= 3
    for stage in _registered():
        actions = {a.dest: a for a in sub[stage.name]._actions}
        for f in dataclasses.fields(stage.params) if stage.params else ():
            if f.metadata.get("cli", False):
                assert f.name in actions, (stage.name, f.name)
                assert actions[f.name].help, (stage.name, f.name)


def test_parsed_flags_build_the_same_params_as_python():
    parser = build_parser()
    args = parser.parse_args(["count", "abc", "--lags", "3", "--train-only", "0.1", "--spill"])
    assert stages.stage("count").params_from_args(args) == CountParams(lags=3, val_fraction=0.1) and args.spill
    args = parser.parse_args(["synth", "--vocab", "4K", "--tokens", "2M", "--zipf", "1.1"])
    assert stages.stage("synth").params_from_args(args) == SynthParams(vocab=4000, tokens=2_000_000, zipf=1.1)
    assert stages.stage("synth").params_from_args(parser.parse_args(["synth"])) == SynthParams()


@pytest.mark.parametrize("argv, flag", [
    (["count", "x", "--lags", "0"], "--lags"),
    (["count", "x", "--train-only", "1"], "--train-only"),
    (["synth", "--vocab", "1"], "--vocab"),
    (["synth", "--tokens", "lots"], "--tokens"),
    (["tokenize", "a.txt", "--split", "sentence"], "--split"),
])
def test_generated_flags_refuse_bad_values_in_one_line(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith(f"ctstore: error: {flag}")


def _cli(ws, *args) -> str:
    """Run ``ctstore ARGS -w WS`` in a fresh process; its stdout (it must succeed)."""
    proc = subprocess.run([sys.executable, "-m", "ctstore.cli", *args, "-w", str(ws)],
                          capture_output=True, text=True, env={**os.environ, "CTSTORE_NO_PROGRESS": "1"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_count_plan_writes_nothing_and_predicts_what_the_run_does(tmp_path):
    def cli(*args):
        return _cli(tmp_path / "ws", *args)

    tokens = json.loads(cli("synth", "--vocab", "3000", "--tokens", "300K", "--json"))["fingerprint"]
    plan = cli("count", tokens, "--lags", "3", "--plan")
    assert "one pass in this process" in plan
    assert not os.path.exists(tmp_path / "ws" / "counts"), "--plan wrote something"
    done = json.loads(cli("count", tokens, "--lags", "3", "--json"))
    assert "one-pass" in json.dumps(done)
    spilled = json.loads(cli("count", tokens, "--lags", "3", "--spill", "--scheduler", "sync", "--plan", "--json"))
    tasks = int(re.search(r"(\d+) map task", " ".join(spilled["plan"])).group(1))
    done = json.loads(cli("count", tokens, "--lags", "3", "--spill", "--scheduler", "sync", "--force", "--json"))
    assert f'"map_tasks": {tasks}' in json.dumps(done, sort_keys=True)


def test_k0_plan_writes_nothing_and_names_the_v_eff_and_solver_the_run_uses(tmp_path):
    def cli(*args):
        return _cli(tmp_path / "ws", *args)

    tokens = json.loads(cli("synth", "--vocab", "2000", "--tokens", "200K", "--json"))["fingerprint"]
    counts = json.loads(cli("count", tokens, "--lags", "2", "--json"))["fingerprint"]
    args = ("k0", counts, "--kernel", "none", "--dim", "16", "--v-eff", "1500", "--scheduler", "sync")
    plan = cli(*args, "--plan")
    assert not os.path.exists(tmp_path / "ws" / "embeddings"), "--plan wrote something"
    solver = re.search(r"k0 solver: (\w+)", plan).group(1)
    assert "1500" in plan and "per task" in plan
    done = json.loads(cli(*args, "--json"))
    assert done["v_eff"] == 1500 and json.dumps(done).count(f'"solver": "{solver}"') >= 1


STAGE_MODULES = ("tokenize", "synth", "count", "embed", "seed", "sft", "crystallize", "export", "generate")


def _stage_of(module: str) -> str | None:
    """'ctstore.embed.stage' -> 'embed'; None for a module that is no stage's."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "ctstore" and parts[1] in STAGE_MODULES else None


def test_no_stage_imports_another_stage():
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "ctstore"
    crossings = []
    for path in root.rglob("*.py"):
        name = ".".join(("ctstore",) + path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        own = _stage_of(name)
        if own is None:
            continue
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                targets = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                other = _stage_of(target)
                if other is not None and other != own:
                    crossings.append(f"{name} imports {target}")
    assert crossings == []
