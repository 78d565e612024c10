"""On-disk formats of ctstore's artifacts: each kind's reader and writer together (docs/design.md §formats).

Every manifest carries ``format_version``: the version of the stage that wrote
the artifact (for tokens, counts and embeddings the version of their format
module, ``FORMAT_VERSION``). :data:`READABLE_VERSIONS` is the one table of the
versions this ctstore reads, per kind, and :func:`require` the one check: each
reader calls it before it opens an artifact (``TokenShards.from_artifact``,
``CountStore.from_artifact``, ``load_embeddings``, ``model_dir``), so a
manifest of a version it does not know is a one-line error naming that
version, never a traceback or a silently wrong read.
"""

from __future__ import annotations

import json

from ..errors import CtstoreError, one_line

__all__ = ["READABLE_VERSIONS", "require"]

# Raise a kind's entry when a writer bumps its version; drop a version only with the code that read it.
READABLE_VERSIONS = {
    "tokens": (1,),  # formats/tokens.py
    "counts": (1,),  # formats/counts.py
    "embeddings": (1,),  # formats/embeddings.py
    "model": (1, 2),  # formats/model.py, one layout: seed 1 and 2, crystallize 1
    "run": (1, 2),  # sft 1 and 2: the trained model in model/ beside metrics.jsonl
    "report": (1,),  # report.py
}


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
