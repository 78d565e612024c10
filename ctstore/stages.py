"""The registry of stages and commands: subcommand -> the module that defines it.

A module defines ``STAGE`` (or ``STAGES``, several), :class:`ctstore.stage.Stage`
records from which :mod:`ctstore.cli` generates the subcommand, its flags and
its run. Modules not yet described that way expose ``add_parser(sub, common)``
and ``run_cli(args, ws)``.
"""

from __future__ import annotations

import importlib

from .stage import Stage

REGISTRY: dict[str, str] = {
    "tokenize": "ctstore.tokenize",
    "synth": "ctstore.synth",
    "count": "ctstore.count",
    "k0": "ctstore.embed.stage",
    "seed": "ctstore.seed",
    "crystallize": "ctstore.crystallize",
    "sft": "ctstore.sft",
    "eval": "ctstore.sft",
    "run": "ctstore.pipeline",
    "export": "ctstore.export",
    "generate": "ctstore.generate",
}


def stage(name: str) -> Stage | None:
    """The :class:`Stage` record of subcommand ``name`` (None for a module with a hand-written parser)."""
    module = importlib.import_module(REGISTRY[name])
    for record in getattr(module, "STAGES", ()) or ((module.STAGE,) if hasattr(module, "STAGE") else ()):
        if record.name == name:
            return record
    return None


def add_parsers(sub, common) -> None:
    legacy = []
    for name, module in REGISTRY.items():
        record = stage(name)
        if record is not None:
            record.add_parser(sub, common)
        elif module not in legacy:
            legacy.append(module)
            importlib.import_module(module).add_parser(sub, common)


def run(args, ws):
    record = stage(args.command)
    if record is not None:
        return record.run_from_args(args, ws)
    return importlib.import_module(REGISTRY[args.command]).run_cli(args, ws)
