"""Stages as peers behind one registry: what a stage declares, its fingerprint, and its command line.

A stage module (``tokenize``, ``count``, ``embed``, ``seed``, ``sft`` ...) exports
``STAGE``, a :class:`Stage`: the artifact kind it writes, its parameters (a
frozen dataclass whose fields carry their command-line help through
:func:`param`), its inputs (other artifacts, or files), the options that steer
*how* it runs but not *what* it computes (``--threads``, ``--device``), a code
version, and ``run``, which builds or reuses the artifact. The CLI
(:mod:`ctstore.cli`) is generated from these records: one subcommand per stage,
one flag per parameter field (docs/design.md §stages).

Parameters are checked in one place too: each field has one validator (its
``param(parse=...)``, its ``choices``, else one derived from its annotation),
used by the command-line flag, by :meth:`Params.from_dict` (pipeline TOML,
``--set``) and by ``__post_init__`` (the Python API). ``__post_init__`` of a
params class keeps only the checks that involve several fields.

Fingerprints are computed here, in one place (:func:`fingerprint`): from the
stage's name, its code version (the cache key: bump it when a fix changes what
the stage computes) and the format version of what it writes, every parameter's
value (defaults included, so a changed default is a new artifact), and the
inputs' fingerprints (docs/design.md §1).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import hashlib
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import CtstoreError, one_line
from .units import number_flag

__all__ = ["FINGERPRINT_CHARS", "Input", "Option", "Params", "Stage", "canonical_json", "did_you_mean",
           "field_checks", "fingerprint", "non_default", "param", "params_from_dict", "resolved"]

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


# -- parameter checks: one validator per field, for flags, files and the Python API ---------------------
def did_you_mean(word: str, known) -> str:
    """`` (did you mean steps?)`` for a near miss, else the known names: the tail of an unknown-name error."""
    known = sorted(map(str, known))
    close = difflib.get_close_matches(str(word), known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(known) or 'none'})"


def _text(value):
    if not isinstance(value, str):
        raise argparse.ArgumentTypeError(f"must be a string, not {one_line(repr(value))}")
    return value


def _switch(value):
    if not isinstance(value, bool):
        raise argparse.ArgumentTypeError(f"must be true or false, not {one_line(repr(value))}")
    return value


def _sequence(value):
    """A tuple field: a list (or tuple) of strings or numbers, stored as a tuple."""
    if not isinstance(value, (list, tuple)) or any(isinstance(v, (bool, dict, list, tuple)) or
                                                   not isinstance(v, (str, int, float)) for v in value):
        raise argparse.ArgumentTypeError(f"must be a list of strings or numbers, not {one_line(repr(value))}")
    return tuple(value)


def _validator(f: dataclasses.Field, annotation) -> Callable[[Any], Any]:
    """The one check of a params field: its ``parse`` (the flag's type) and ``choices``, else one by annotation.

    It takes a flag's text or a value (TOML, Python) and returns the value or raises
    ``argparse.ArgumentTypeError`` (``must be ..., not ...``). None passes where the
    annotation allows it.
    """
    kind = _base_type(annotation)
    optional = type(None) in typing.get_args(annotation)
    parse = f.metadata.get("parse")
    if parse is None:
        parse = {bool: _switch, int: number_flag(int), float: number_flag(float), str: _text,
                 tuple: _sequence}.get(kind, lambda value: value)
    choices = f.metadata.get("choices")

    def check(value):
        if value is None and optional:
            return None
        value = parse(value)
        if choices is not None and value not in choices:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(map(str, choices))}, not "
                                             f"{one_line(repr(value))}")
        return value

    check.__name__ = getattr(parse, "__name__", "value")
    return check


@functools.cache
def field_checks(cls: type) -> dict[str, Callable[[Any], Any]]:
    """Each field of the params dataclass ``cls`` and its validator."""
    hints = typing.get_type_hints(cls)
    return {f.name: _validator(f, hints[f.name]) for f in dataclasses.fields(cls)}


def _flag_of(f: dataclasses.Field) -> str:
    meta = f.metadata
    if meta.get("cli", False):
        return meta.get("flag") or "--" + f.name.replace("_", "-")
    return f.name


def params_from_dict(cls: type, data: Any, where: str | Callable[[str], str] = ""):
    """``cls(**data)`` after checking every key and value; a mistake is one line naming where and the key.

    ``where`` names the table (``"pipelines/x.toml: [sft]"``), or is a function of
    the key giving the whole place (``--set sft.steps``). Unknown keys get a
    did-you-mean suggestion.
    """
    name = where if callable(where) else (lambda key: f"{where} {key}".strip())
    if not isinstance(data, dict):
        raise CtstoreError(f"{name('').strip()}: must be a table of settings, not {one_line(repr(data))}")
    checks = field_checks(cls)
    values = {}
    for key, value in data.items():
        if key not in checks:
            raise CtstoreError(f"{name(key)}: unknown key{did_you_mean(key, checks)}")
        try:
            values[key] = checks[key](value)
        except (argparse.ArgumentTypeError, CtstoreError) as exc:
            raise CtstoreError(f"{name(key)}: {exc}") from None
    try:
        return cls(**values)
    except CtstoreError as exc:  # a check across fields (__post_init__)
        raise CtstoreError(f"{name('').strip()}: {exc}") from None


class Params:
    """Base of the parameter dataclasses: fields checked by their validators, built from and turned into dicts.

    A subclass that checks combinations of fields in its own ``__post_init__``
    calls ``super().__post_init__()`` first.
    """

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                checked = field_checks(type(self))[f.name](value)
            except argparse.ArgumentTypeError as exc:
                raise CtstoreError(f"{_flag_of(f)} {exc}") from None
            if checked is not value:  # a list becomes a tuple, "4K" a count, 1 a float for a float field
                object.__setattr__(self, f.name, checked)

    @classmethod
    def from_dict(cls, data: dict, where: str | Callable[[str], str] = ""):
        """The parameters from a table (TOML, ``--set``), validated; see :func:`params_from_dict`."""
        return params_from_dict(cls, data, where)

    def to_dict(self) -> dict:
        """Every field, JSON-ready (tuples as lists)."""
        return resolved(self)


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
    # the cache key of what the stage computes: bump it when a fix changes the output for the same parameters
    # (old artifacts stay readable by fingerprint, new runs recompute). Not the layout: that is format_version.
    code_version: int = 1
    format_version: int = 1  # the layout the stage writes (its formats/ module's FORMAT_VERSION)
    compute: bool = True  # accepts --memory, --scheduler and --force
    # plan(ws, inputs, params, options) -> lines: what run would do and the memory it projects, from
    # metadata only (no data read, nothing written); offered as --plan
    plan: Callable | None = None

    def fingerprint(self, params: Any, inputs: dict, sources: list | None = None) -> str:
        return fingerprint(self.name, self.code_version, params, inputs, sources, format_version=self.format_version)

    # -- command line --------------------------------------------------------------------------
    def add_parser(self, sub, common) -> argparse.ArgumentParser:
        s = sub.add_parser(self.name, help=self.help)
        for inp in self.inputs:
            if inp.flag:
                s.add_argument(f"--{inp.name}", dest=inp.name, required=True, help=inp.help)
            else:
                s.add_argument(inp.name, nargs=inp.nargs, help=inp.help)
        if self.params is not None:
            hints, checks = typing.get_type_hints(self.params), field_checks(self.params)
            for f in dataclasses.fields(self.params):
                if f.metadata.get("cli", False):
                    _add_param_flag(s, f, hints[f.name], checks[f.name])
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


def _add_param_flag(parser: argparse.ArgumentParser, f: dataclasses.Field, annotation, check: Callable) -> None:
    """One flag per field; its argparse type is the field's validator (the same check as in files)."""
    meta = f.metadata
    names = [meta["flag"] or "--" + f.name.replace("_", "-")] + ([meta["short"]] if meta["short"] else [])
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    kind = _base_type(annotation)
    help_text = meta["help"]
    if kind is bool:
        action = "store_false" if meta["negate"] else "store_true"
        parser.add_argument(*names, dest=f.name, action=action, default=default, help=help_text)
        return
    if default is not None and "default" not in help_text:
        help_text = f"{help_text} (default {_show(default)})" if help_text else f"default {_show(default)}"
    parser.add_argument(*names, dest=f.name, default=default, type=check, choices=meta["choices"],
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


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def resolved(params: Any) -> dict:
    """Every field of a params dataclass, defaults included (JSON-ready); a dict passes through."""
    if params is None:
        return {}
    if not dataclasses.is_dataclass(params):
        return dict(params)
    return {f.name: _jsonable(getattr(params, f.name)) for f in dataclasses.fields(params)}


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
            out[f.name] = _jsonable(value)
    return out


def fingerprint(stage: str, code_version: int, params: Any, inputs: dict, sources: list | None = None, *,
                format_version: int | None = None) -> str:
    """Stable content key of an artifact: sha256 of the canonical JSON, 20 hex chars.

    Covers the stage that wrote it, that stage's code version and (for stages)
    the format version it writes, every parameter's value (a params dataclass
    enters whole, defaults included: a changed default is another artifact), the
    inputs' fingerprints and, for stages that read files, the files' content
    hashes (``sources``). A plain dict of parameters (reports, test fixtures)
    enters as given.
    """
    payload = {"stage": stage, "code_version": code_version, "params": resolved(params), "inputs": inputs}
    if format_version is not None:
        payload["format_version"] = format_version
    if sources is not None:
        payload["sources"] = sources
    try:
        text = canonical_json(payload)
    except TypeError as exc:  # a parameter value JSON cannot hold: a programming error, named
        raise CtstoreError(f"{stage}: parameters cannot be fingerprinted ({exc})") from None
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_CHARS]
