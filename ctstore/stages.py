"""Registry of the stages after ``count`` (k0, seed, sft, eval, run, export, generate) for the CLI.

Each stage module exposes ``add_parser(sub, common)`` and ``run_cli(args, ws)``;
this module only lists them, so ``cli.py`` stays a thin dispatcher.
"""

from __future__ import annotations

import importlib

STAGES: dict[str, str] = {
    "k0": "ctstore.k0",
    "seed": "ctstore.seed",
    "sft": "ctstore.sft.stage",
    "eval": "ctstore.sft.stage",
    "run": "ctstore.pipeline",
    "crystallize": "ctstore.crystallize",
    "export": "ctstore.export",
    "generate": "ctstore.generate",
}


def add_parsers(sub, common) -> None:
    for module in dict.fromkeys(STAGES.values()):
        importlib.import_module(module).add_parser(sub, common)


def run(args, ws):
    return importlib.import_module(STAGES[args.command]).run_cli(args, ws)
