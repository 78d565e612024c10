"""On-disk formats of ctstore's artifacts: each kind's reader and writer together (docs/design.md §formats).

Every manifest carries ``format_version``: the version of the stage that wrote
the artifact (for tokens, counts and embeddings the version of their format
module, ``FORMAT_VERSION``). :data:`KINDS` holds one :class:`Kind` record per
artifact kind (its readable versions, reader and ``ls`` summary);
:data:`READABLE_VERSIONS` derives from it, and :func:`require` is the one check: each
reader calls it before it opens an artifact (``TokenShards.from_artifact``,
``CountStore.from_artifact``, ``load_embeddings``, ``model_dir``), so a
manifest of a version it does not know is a one-line error naming that
version, never a traceback or a silently wrong read.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from typing import Callable

from ..errors import CtstoreError, one_line

__all__ = ["Kind", "KINDS", "READABLE_VERSIONS", "copy_directory", "kind", "require", "write_file"]


def write_file(location, data: bytes) -> None:
    """Write ``data`` at the :class:`~ctstore.location.Location` ``location``, creating its directory.

    For files inside an artifact that is not yet published (its manifest, written
    last, is what makes it visible), so no temporary name is needed.
    """
    location.fs.makedirs(location.path.rsplit("/", 1)[0] or "/", exist_ok=True)
    with location.open("wb") as f:
        f.write(data)


def copy_directory(directory: str, location) -> None:
    """Every file under the local ``directory`` into ``location``, keeping relative paths (a local working copy
    of an unpublished artifact, e.g. an SFT run trained on this machine for a remote workspace)."""
    import os

    for root, _dirs, files in os.walk(directory):
        for name in sorted(files):
            relative = os.path.relpath(os.path.join(root, name), directory).split(os.sep)
            with open(os.path.join(root, name), "rb") as f:
                write_file(location.child(*relative), f.read())


@dataclass(frozen=True)
class Kind:
    """One artifact kind: everything the workspace, ``ls``, ``gc`` and the readers need to know about it.

    A new kind is one record in :data:`KINDS`: ``artifact.KINDS``,
    :data:`READABLE_VERSIONS`, the CLI's ``ls`` summaries and ``--kind`` names,
    and the store conformance tests (``tests/test_conformance.py``) derive from it.

    Attributes
    ----------
    name, plural : the kind as it appears in the workspace (``<name>/<fingerprint>/``) and in ``ls --kind``.
    versions : the format versions this ctstore reads (raise it when a writer bumps its version; drop a
        version only with the code that read it).
    module : the format module holding the kind's writer and reader, both on a :class:`~ctstore.location.Location`.
    reader : ``"module:function"`` that reads a complete artifact of the kind back (imported when called, so
        the record stays light: ``ls`` never imports torch, zarr or pyarrow).
    summary : a few words saying what an artifact is, from its manifest, for ``ls``.
    """

    name: str
    plural: str
    versions: tuple[int, ...]
    module: str
    reader: str
    summary: Callable = field(repr=False, compare=False)

    def read(self, artifact):
        """Read ``artifact`` back with this kind's reader."""
        module, _, attr = self.reader.partition(":")
        target = importlib.import_module(module)
        for part in attr.split("."):
            target = getattr(target, part)
        return target(artifact)


def _tokens_summary(artifact) -> str:
    m = artifact.manifest
    return f"{m.get('tokens', 0)} tok, {m.get('tokenizer')}"


def _counts_summary(artifact) -> str:
    return f"lags 1..{artifact.params.get('lags')}"


def _embeddings_summary(artifact) -> str:
    m = artifact.manifest
    return f"{m.get('operator')} d={m.get('dim')} V_eff={m.get('v_eff')}"


def _model_summary(artifact) -> str:
    m = artifact.manifest
    operator = f" ({m['operator']})" if m.get("init") == "spectral" and m.get("operator") else ""
    return f"{m.get('init')}{operator}"


def _run_summary(artifact) -> str:
    """Which arm a run is (init, frozen or trained embedding, tied or untied head), its steps and perplexity."""
    m = artifact.manifest
    frozen = m.get("frozen_embedding_rows")
    head = "" if m.get("tie_head", True) else ", untied head"
    scale = f", {m['embed_scale']} E" if m.get("embed_scale") not in (None, "matched") else ""
    arm = f"init {_model_summary_of(artifact)}, E {'frozen' if frozen else 'trained'}{scale}{head}"
    ppl = m.get("final_val_ppl")
    ppl = f", ppl {ppl:.2f}" if isinstance(ppl, (int, float)) else ""
    return f"sft {arm}, {m.get('steps')} steps{ppl}"


def _model_summary_of(run) -> str:
    """The init of a run's model, with the operator its embeddings came from (read from the model's manifest)."""
    model = run.manifest.get("inputs", {}).get("model")
    try:
        manifest = run.workspace.read_manifest("model", model)[0] if isinstance(model, str) else None
    except OSError:
        manifest = None
    return _model_summary(type(run)(run.workspace, "model", model, manifest)) if manifest else str(
        run.manifest.get("init"))


def _report_summary(artifact) -> str:
    from .report import verdict_counts

    return f"{artifact.params.get('experiment')}: {verdict_counts(artifact)}"


KINDS: tuple[Kind, ...] = (
    Kind("tokens", "tokens", (1,), "ctstore.formats.tokens", "ctstore.formats.tokens:TokenShards.from_artifact",
         _tokens_summary),
    Kind("counts", "counts", (1,), "ctstore.formats.counts", "ctstore.formats.counts:CountStore.from_artifact",
         _counts_summary),
    Kind("embeddings", "embeddings", (1,), "ctstore.formats.embeddings",
         "ctstore.formats.embeddings:load_embeddings", _embeddings_summary),
    # one layout: seed 1 and 2, crystallize 1
    Kind("model", "models", (1, 2), "ctstore.formats.model", "ctstore.formats.model:load_from_artifact",
         _model_summary),
    # an SFT run; sft 1 and 2: the trained model in model/ beside metrics.jsonl
    Kind("run", "runs", (1, 2), "ctstore.formats.run", "ctstore.formats.run:read_metrics", _run_summary),
    # an experiment's report, from `ctstore run`
    Kind("report", "reports", (1,), "ctstore.formats.report", "ctstore.formats.report:read_results",
         _report_summary),
)
_BY_NAME = {k.name: k for k in KINDS} | {k.plural: k for k in KINDS}

READABLE_VERSIONS = {k.name: k.versions for k in KINDS}


def kind(name: str) -> Kind:
    """The record of kind ``name`` (singular or plural); an unknown name is a one-line error listing the kinds."""
    try:
        return _BY_NAME[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(_BY_NAME), n=1)
        hint = f" (did you mean {_BY_NAME[close[0]].name}?)" if close else ""
        raise CtstoreError(f"--kind {one_line(name)}: unknown artifact kind{hint}; kinds: "
                           f"{', '.join(k.name for k in KINDS)}") from None


def require(artifact, *kinds: str, expected: str | None = None):
    """``artifact`` if it is of one of ``kinds`` in a format version this ctstore reads, else a one-line error.

    ``expected`` words the kinds in the wrong-kind message (default: ``kinds``
    joined by "or").
    """
    if artifact.kind not in kinds:
        raise CtstoreError(f"{artifact}: is a {artifact.kind} artifact, expected {expected or ' or '.join(kinds)}")
    version = artifact.manifest.get("format_version")
    readable = READABLE_VERSIONS[artifact.kind]
    if isinstance(version, int) and not isinstance(version, bool) and version in readable:
        return artifact
    wrote = artifact.manifest.get("ctstore_version")
    writer = f"ctstore {one_line(wrote)}, which wrote it" if isinstance(wrote, str) else "the ctstore that wrote it"
    named = "no format version" if version is None else f"format version {one_line(json.dumps(version))}"
    raise CtstoreError(f"{artifact}: {named}, this ctstore reads {', '.join(map(str, readable))}; recompute it "
                       f"with this ctstore (run its stage again) or read it with {writer}")
