"""The registry of stages and commands: subcommand -> the module that defines it.

A module defines ``STAGE`` (or ``STAGES``, several), :class:`ctstore.stage.Stage`
records from which :mod:`ctstore.cli` generates the subcommand, its flags and
its run.
"""

from __future__ import annotations

import importlib

from .stage import Stage

REGISTRY: dict[str, str] = {
    "tokenize": "ctstore.tokenize.stage",
    "synth": "ctstore.synth",
    "count": "ctstore.count.stage",
    "k0": "ctstore.embed.stage",
    "seed": "ctstore.seed",
    "crystallize": "ctstore.crystallize",
    "sft": "ctstore.sft.stage",
    "eval": "ctstore.sft.stage",
    "run": "ctstore.pipeline",
    "export": "ctstore.export",
    "generate": "ctstore.generate",
}


def stage(name: str) -> Stage:
    """The :class:`Stage` record of subcommand ``name``."""
    module = importlib.import_module(REGISTRY[name])
    records = getattr(module, "STAGES", None) or (module.STAGE,)
    return next(record for record in records if record.name == name)


def add_parsers(sub, common) -> None:
    for name in REGISTRY:
        stage(name).add_parser(sub, common)


def run(args, ws):
    return stage(args.command).run_from_args(args, ws)
