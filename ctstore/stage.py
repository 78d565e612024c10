"""Stages as peers behind one registry: what a stage declares, its fingerprint, and its command line.

A stage module (``tokenize``, ``count``, ``embed``, ``seed``, ``sft`` ...) exports
``STAGE``, a :class:`Stage`: the artifact kind it writes, its parameters (a
frozen dataclass whose fields carry their command-line help through
:func:`param`), its inputs (other artifacts, or files), the options that steer
*how* it runs but not *what* it computes (``--threads``, ``--device``), a code
version, and ``run``, which builds or reuses the artifact. The CLI
(:mod:`ctstore.cli`) is generated from these records: one subcommand per stage,
one flag per parameter field (docs/design.md §stages).

Fingerprints are computed here, in one place (:func:`fingerprint`): from the
stage's name and code version, the *non-default* parameters, and the inputs'
fingerprints. A parameter added later with a default therefore leaves every
existing fingerprint as it was; a change to what a stage computes for the same
parameters bumps its ``code_version``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import CtstoreError
from .units import number_flag

__all__ = ["FINGERPRINT_CHARS", "Input", "Option", "Stage", "canonical_json", "fingerprint", "non_default",
           "param"]

FINGERPRINT_CHARS = 20


def param(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None, short: str | None = None,
          parse: Callable | None = None, choices: tuple | None = None, metavar: str | None = None,
          negate: bool = False, cli: bool = True, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field of stage parameters, with what its command-line flag needs.

    ``flag`` defaults to ``--<name-with-dashes>``; ``parse`` converts and checks
    the text (it is argparse's ``type``, so a bad value is a one-line error at
    parse time); a ``bool`` field is a switch (``negate``: the flag sets it to
    False, e.g. ``--untied-head`` for ``tie_head``); ``cli=False`` keeps a
    field off the command line (set by pipelines and the Python API only).
    """
    metadata = {"help": help, "flag": flag, "short": short, "parse": parse, "choices": choices,
                "metavar": metavar, "negate": negate, "cli": cli}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Input:
    """An input of a stage: an artifact of ``kind`` (``"any"``: of any kind) by fingerprint or prefix, or, with
    kind None, text (a path)."""

    name: str
    kind: str | None
    help: str
    nargs: str | None = None
    flag: bool = False  # given as a required --<name> flag instead of a positional argument


@dataclass(frozen=True)
class Option:
    """A flag that steers how a stage runs, not what it computes: never part of a fingerprint."""

    flag: str
    help: str
    default: Any = None
    parse: Callable | None = None
    choices: tuple | None = None
    switch: bool = False
    dest: str | None = None
    metavar: str | None = None
    repeat: bool = False
    required: bool = False
    short: str | None = None

    @property
    def name(self) -> str:
        return self.dest or self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Stage:
    """One pipeline stage (or, with ``kind`` None, a command that writes no artifact: eval, export, generate).

    ``run(ws, inputs, params, options)`` builds or reuses the artifact and
    returns it (or None); ``inputs`` maps each :class:`Input`'s name to an
    artifact (or its text), ``options`` each :class:`Option`'s name to its value
    plus ``memory``, ``scheduler`` and ``force`` for computing stages.
    """

    name: str
    help: str
    kind: str | None
    params: type | None
    run: Callable
    inputs: tuple[Input, ...] = ()
    options: tuple[Option, ...] = ()
    code_version: int = 1
    compute: bool = True  # accepts --memory, --scheduler and --force
    # plan(ws, inputs, params, options) -> lines: what run would do and the memory it projects, from
    # metadata only (no data read, nothing written); offered as --plan
    plan: Callable | None = None

    def fingerprint(self, params: Any, inputs: dict, sources: list | None = None) -> str:
        return fingerprint(self.name, self.code_version, params, inputs, sources)

    # -- command line --------------------------------------------------------------------------
    def add_parser(self, sub, common) -> argparse.ArgumentParser:
        s = sub.add_parser(self.name, help=self.help)
        for inp in self.inputs:
            if inp.flag:
                s.add_argument(f"--{inp.name}", dest=inp.name, required=True, help=inp.help)
            else:
                s.add_argument(inp.name, nargs=inp.nargs, help=inp.help)
        if self.params is not None:
            hints = typing.get_type_hints(self.params)
            for f in dataclasses.fields(self.params):
                if f.metadata.get("cli", False):
                    _add_param_flag(s, f, hints[f.name])
        for opt in self.options:
            _add_option(s, opt)
        if self.plan is not None:
            s.add_argument("--plan", action="store_true",
                           help="print what would run and its projected memory, then exit (nothing is written)")
        common(s, compute=self.compute)
        return s

    def params_from_args(self, args: argparse.Namespace):
        """The params dataclass from parsed flags (fields kept off the command line take their defaults)."""
        if self.params is None:
            return None
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(self.params)
                  if f.metadata.get("cli", False)}
        return self.params(**values)

    def run_from_args(self, args: argparse.Namespace, ws):
        inputs = {}
        for inp in self.inputs:
            value = getattr(args, inp.name)
            if inp.kind is None:
                inputs[inp.name] = value
            else:
                inputs[inp.name] = ws.get(value, kind=None if inp.kind == "any" else inp.kind)
        options = {opt.name: getattr(args, opt.name) for opt in self.options}
        options["json"] = args.json
        if self.compute:
            options.update(memory=args.memory, scheduler=args.scheduler, force=args.force)
        params = self.params_from_args(args)
        if getattr(args, "plan", False):
            lines = self.plan(ws, inputs, params, options)
            print(json.dumps({"stage": self.name, "plan": lines}) if args.json else "\n".join(lines))
            return None
        return self.run(ws, inputs, params, options)


def _base_type(annotation) -> type | None:
    """``int`` for ``int``, ``int | None``; None for unions of several types (they need ``parse``)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if not args:
        return annotation if isinstance(annotation, type) else None
    return args[0] if len(args) == 1 and isinstance(args[0], type) else None


def _add_param_flag(parser: argparse.ArgumentParser, f: dataclasses.Field, annotation) -> None:
    meta = f.metadata
    names = [meta["flag"] or "--" + f.name.replace("_", "-")] + ([meta["short"]] if meta["short"] else [])
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    kind = _base_type(annotation)
    help_text = meta["help"]
    if kind is bool:
        action = "store_false" if meta["negate"] else "store_true"
        parser.add_argument(*names, dest=f.name, action=action, default=default, help=help_text)
        return
    parse = meta["parse"]
    if parse is None and kind in (int, float):
        parse = number_flag(kind)  # a numeric flag nobody described further: at least a finite number
    if default is not None and "default" not in help_text:
        help_text = f"{help_text} (default {_show(default)})" if help_text else f"default {_show(default)}"
    parser.add_argument(*names, dest=f.name, default=default, type=parse, choices=meta["choices"],
                        metavar=meta["metavar"], help=help_text)


def _add_option(parser: argparse.ArgumentParser, opt: Option) -> None:
    names = [opt.flag] + ([opt.short] if opt.short else [])
    if opt.switch:
        parser.add_argument(*names, dest=opt.name, action="store_true", help=opt.help)
    elif opt.repeat:
        parser.add_argument(*names, dest=opt.name, action="append", default=[], metavar=opt.metavar,
                            help=opt.help)
    else:
        parser.add_argument(*names, dest=opt.name, default=opt.default, type=opt.parse, choices=opt.choices,
                            metavar=opt.metavar, required=opt.required, help=opt.help)


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return str(value)


# -- fingerprints ------------------------------------------------------------------------------
def canonical_json(obj: object) -> str:
    """JSON with sorted keys and no whitespace: the input of every fingerprint."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def non_default(params: Any) -> dict:
    """The fields of a params dataclass that differ from their defaults (JSON-ready); a dict passes through."""
    if params is None:
        return {}
    if not dataclasses.is_dataclass(params):
        return dict(params)
    out = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if value != default:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def fingerprint(stage: str, code_version: int, params: Any, inputs: dict, sources: list | None = None) -> str:
    """Stable content key of an artifact: sha256 of the canonical JSON, 20 hex chars.

    Covers the stage that wrote it and that stage's code version, the
    parameters that differ from their defaults, the inputs' fingerprints and,
    for stages that read files, the files' content hashes (``sources``).
    """
    payload = {"stage": stage, "code_version": code_version, "params": non_default(params), "inputs": inputs}
    if sources is not None:
        payload["sources"] = sources
    try:
        text = canonical_json(payload)
    except TypeError as exc:  # a parameter value JSON cannot hold: a programming error, named
        raise CtstoreError(f"{stage}: parameters cannot be fingerprinted ({exc})") from None
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_CHARS]
