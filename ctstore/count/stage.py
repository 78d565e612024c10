"""Stage ``count``: its parameters, its entry point and its command line (docs/design.md §3).

:func:`count_cooccurrences` picks an engine (:mod:`.onepass` when the corpus fits
``--memory``, else :mod:`.mapreduce`), and publishes the store with its manifest,
written last, so a killed count never looks complete.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..cluster import CLIENT_RESERVE, plan_cluster
from ..formats.counts import FORMAT_VERSION, STORE
from ..formats.tokens import TokenShards
from ..stage import Input, Option, Params, Stage, param
from ..units import FRACTION, format_bytes, number_flag, parse_memory
from ..workspace import Workspace, build_artifact
from .mapreduce import _count_into
from .onepass import _count_one_pass, _one_pass_outlook
from .plan import plan_count

@dataclass(frozen=True)
class CountParams(Params):
    lags: int = param(10, "count lags 1..L (default 10)", parse=number_flag(int, 1, 64))
    # None counts every document
    val_fraction: float | None = param(None, "count only the training documents of sft's split (ctstore.split) at "
                                       "this validation fraction", flag="--train-only", metavar="VAL_FRACTION",
                                       parse=FRACTION)


def count_cooccurrences(tokens, workspace: Workspace | None = None, *, params: CountParams | None = None,
                        memory: str | int = "4GB", scheduler: str | None = None, force: bool = False,
                        spill: bool = False, head: int | None = None):
    """Count lag-1..L co-occurrences of a tokens artifact into a ``counts`` artifact.

    Parameters
    ----------
    tokens : a tokens :class:`~ctstore.workspace.Artifact`.
    params : ``CountParams(lags=10)``; the fingerprint depends only on it and the tokens.
    memory : budget for the whole process tree, e.g. ``"2GB"``.
    scheduler : ``None``/``"local"``: one in-process pass when the corpus fits the budget,
        else map/reduce on a LocalCluster; ``"sync"``: map/reduce tasks one after another in
        this process; or a scheduler address (map/reduce on that cluster).
    spill : always run the spilled, resumable map/reduce tasks (never the one-pass path).
    head : number of most frequent ids counted in a dense table (None: chosen per chunk);
        for tests and measurements, the store is the same for every value.
    """
    ws = workspace or tokens.workspace
    params = params or CountParams()
    shards = TokenShards.from_artifact(tokens)
    fp = STAGE.fingerprint(params, {"tokens": tokens.fingerprint})
    store = ws.artifact_location("counts", fp).child(STORE)

    def build(path: str) -> dict:
        counted = None
        if not spill and (scheduler or "local") == "local":
            counted = _count_one_pass(store, tokens, shards, params, memory, head)
        if counted is None:
            counted = _count_into(ws, store, fp, tokens, shards, params, memory, scheduler, head)
        return _manifest_body(tokens, params, counted)

    artifact, _ = build_artifact(ws, "counts", fp, build, force=force, keep_partial=True)
    return artifact


def _manifest_body(tokens, params: CountParams, counted: dict) -> dict:
    """The counts manifest: the stage's own fields and what the engine ``counted`` (its ``nnz`` keyed by lag)."""
    return {
        "format_version": FORMAT_VERSION,
        "params": _param_dict(params),
        "inputs": {"tokens": tokens.fingerprint},
        "tokenizer": tokens.manifest.get("tokenizer"),
        **counted,
        "nnz": {str(k): counted["nnz"][k] for k in sorted(counted["nnz"])},
    }


def _param_dict(params: CountParams) -> dict:
    """Parameters for the fingerprint and manifest; ``val_fraction`` only when set (old counts keep their names)."""
    return {k: v for k, v in asdict(params).items() if not (k == "val_fraction" and v is None)}


def plan_lines(ws, inputs, params: CountParams, opts) -> list[str]:
    """``ctstore count --plan``: the path a count would take and its projected memory, from metadata only."""
    tokens = inputs["tokens"]
    shards = TokenShards.from_artifact(tokens)
    budget = parse_memory(opts["memory"])
    scheduler = opts["scheduler"] or "local"
    lines = [f"count {tokens}: {shards.n_tokens} tokens, V={shards.n_vocab}, lags 1..{params.lags}"
             + (f", training documents only (validation fraction {params.val_fraction})"
                if params.val_fraction else "")]
    if not opts["spill"] and scheduler == "local":
        outlook, need = _one_pass_outlook(tokens, shards, params.lags, None, budget)
        projected = f"projected peak {format_bytes(need + CLIENT_RESERVE)}" if need is not None else ""
        if outlook == "yes":
            return lines + [f"one pass in this process: {projected} of the {format_bytes(budget)} budget "
                            "(no spill, no cluster)"]
        if outlook == "maybe":
            return lines + ["one pass in this process if the corpus, once read, fits the "
                            f"{format_bytes(budget)} budget (no unigram to project from); else map/reduce"]
        lines.append(f"one pass does not fit the {format_bytes(budget)} budget"
                     + (f" ({projected})" if projected else "") + ": map/reduce")
    cluster = plan_cluster(budget, in_process=scheduler == "sync")
    plan = plan_count(shards.n_vocab, list(shards.shards), params.lags, cluster.task_memory)
    return lines + [plan.describe(), cluster.describe()]


STAGE = Stage(
    name="count", kind="counts", params=CountParams, code_version=1, format_version=FORMAT_VERSION,
    help="tokens -> lag-k co-occurrence count store (Zarr CSR)",
    inputs=(Input("tokens", "tokens", "tokens artifact fingerprint (or unique prefix)"),),
    options=(Option("--spill", "always run the spilled, resumable map/reduce tasks, even when the corpus fits one "
                    "in-process pass within --memory", switch=True),),
    run=lambda ws, inputs, params, opts: count_cooccurrences(
        inputs["tokens"], ws, params=params, memory=opts["memory"], scheduler=opts["scheduler"], force=opts["force"],
        spill=opts["spill"]),
    plan=plan_lines,
)
