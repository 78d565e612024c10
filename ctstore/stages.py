"""The registry of stages and commands: subcommand -> the module that defines it.

A module defines ``STAGE`` (or ``STAGES``, several), :class:`ctstore.stage.Stage`
records from which :mod:`ctstore.cli` generates the subcommand, its flags and
its run.

Stage modules import torch, dask, zarr or pyarrow, which take seconds. So the
command line imports only the module of the subcommand it runs; ``ctstore
--help`` lists the others from :data:`SUMMARIES`, their one-line help
(``tests/test_cli.py`` checks that each equals its record's ``help``).
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


# the one-line help of each subcommand, as its Stage record says it (listed by `ctstore --help` without importing)
SUMMARIES: dict[str, str] = {
    "tokenize": "text/JSONL/Parquet corpus -> tokens artifact",
    "synth": "synthetic Zipfian token stream -> tokens artifact",
    "count": "tokens -> lag-k co-occurrence count store (Zarr CSR)",
    "k0": "count store -> embeddings (K0 circulant, SVD, PPMI)",
    "seed": "embeddings -> PhotonicGPT (spectral seeding or random init)",
    "crystallize": "counts -> model without training (Paper 51: lag bands, SVD, harmonic layers)",
    "sft": "fine-tune a model on tokens -> run artifact",
    "eval": "perplexity of a model (or run) on a tokens split",
    "run": "run a declarative experiment pipeline (TOML) and write its report",
    "export": "model or run -> a directory transformers loads (GPT-NeoX)",
    "generate": "sample text from a model or run",
}


def stage(name: str) -> Stage:
    """The :class:`Stage` record of subcommand ``name``."""
    module = importlib.import_module(REGISTRY[name])
    records = getattr(module, "STAGES", None) or (module.STAGE,)
    return next(record for record in records if record.name == name)


def add_parsers(sub, common, only: set[str] | None = None) -> None:
    """One subparser per command: built from its Stage record when ``only`` is None or names it, else a
    placeholder carrying its one-line help (so that listing the commands imports no stage module)."""
    for name in REGISTRY:
        if only is None or name in only:
            stage(name).add_parser(sub, common)
        else:
            sub.add_parser(name, help=SUMMARIES[name], add_help=False)


def run(args, ws):
    return stage(args.command).run_from_args(args, ws)
