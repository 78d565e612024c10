"""What an artifact is: its kinds, its manifest, and the handle readers receive (docs/design.md §1).

An artifact is the directory ``<workspace>/<kind>/<fingerprint>/``; it is
*complete* exactly when its ``manifest.json`` exists (written last, atomically,
by :meth:`~ctstore.workspace.Workspace.publish`). The manifest names kind,
fingerprint, the ctstore version and ``format_version`` that wrote it, the
parameters and input fingerprints, and the content hash of every file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .formats import KINDS as _KIND_RECORDS
from .location import Location

if TYPE_CHECKING:
    from .workspace import Workspace

__all__ = ["Artifact", "KINDS", "MANIFEST"]

KINDS = tuple(k.name for k in _KIND_RECORDS)  # one record per kind in ctstore.formats.KINDS
MANIFEST = "manifest.json"


@dataclass
class Artifact:
    """Handle on a complete artifact: its manifest plus where it lives."""

    workspace: "Workspace"
    kind: str
    fingerprint: str
    manifest: dict = field(repr=False)

    @property
    def path(self) -> str:
        return self.workspace.artifact_path(self.kind, self.fingerprint)

    @property
    def url(self) -> str:
        return self.location.url

    @property
    def location(self) -> Location:
        """The artifact's directory with the workspace's storage options: what readers and tasks open."""
        return self.workspace.artifact_location(self.kind, self.fingerprint)

    def child(self, name: str) -> str:
        return f"{self.url}/{name}"

    @property
    def params(self) -> dict:
        return self.manifest.get("params", {})

    def __str__(self) -> str:
        return f"{self.kind}/{self.fingerprint}"
