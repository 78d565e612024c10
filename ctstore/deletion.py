"""What may be deleted, and where: the workspace marker, export leftovers, removal without following links.

Used by :meth:`ctstore.workspace.Workspace.gc` and ``ctstore export --force``
(docs/reliability.md, "Path and deletion rules"). A workspace is marked by
``<root>/.ctstore-workspace``; a directory that holds one, or the layout of
one written before markers (``.locks/`` or ``<kind>/<fingerprint>/``), is never
replaced by an export; removal never follows a symbolic link.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import TYPE_CHECKING

from .artifact import KINDS

if TYPE_CHECKING:
    from .workspace import Workspace

__all__ = ["MARKER", "EXPORT_RECORD", "EXPORT_PARTIAL", "ExportRecord", "export_leftovers", "contains_workspace",
           "looks_like_workspace", "inside_workspace", "remove_local"]

EXPORT_RECORD = "export-"
EXPORT_PARTIAL = re.compile(r"\.partial-[0-9a-f]{8}$")
MARKER = ".ctstore-workspace"
_FP = re.compile(r"[0-9a-f]{20}")


class ExportRecord:
    """Held while an export writes ``OUT_DIR.partial-*``: a scratch lock and ``tmp/export-<hash>`` naming
    ``OUT_DIR``, so ``gc`` can remove what a killed export left."""

    def __init__(self, ws: "Workspace", out_dir: str):
        import hashlib

        self.ws, self.out_dir = ws, os.path.abspath(out_dir)
        self.name = EXPORT_RECORD + hashlib.sha256(self.out_dir.encode()).hexdigest()[:16]
        self.lock = ws.scratch_lock(self.name) if ws.is_local else None

    def __enter__(self):
        if self.lock is None:
            return self
        self.lock.__enter__()
        self.path = os.path.join(self.ws.root, "tmp", self.name)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "w") as f:
            json.dump({"out_dir": self.out_dir}, f)
        return self

    def __exit__(self, *exc):
        if self.lock is None:
            return
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        self.lock.__exit__(*exc)


def export_leftovers(record: str) -> list[str]:
    """The ``OUT.partial-<8 hex>`` directories of a dead export recorded in ``record`` (none holds a workspace)."""
    try:
        with open(record, "rb") as f:
            out_dir = json.loads(f.read(1 << 16)).get("out_dir")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(out_dir, str) or not os.path.isabs(out_dir):
        return []
    parent, base = os.path.dirname(out_dir), os.path.basename(out_dir)
    out = []
    for name in _listdir(parent):
        path = os.path.join(parent, name)
        if (name.startswith(base + ".partial-") and EXPORT_PARTIAL.search(name)
                and os.path.isdir(path) and not os.path.islink(path) and not contains_workspace(path)):
            out.append(path)
    return out


def contains_workspace(path: str) -> bool:
    """True when ``path`` or a directory below it holds a workspace marker or a workspace's layout."""
    for top, dirs, files in os.walk(path):  # never follows links
        if MARKER in files or looks_like_workspace(top, dirs):
            return True
    return False


def looks_like_workspace(path: str, dirs: list[str] | None = None) -> bool:
    """A marker, or the layout of one written before markers: ``.locks/`` or ``<kind>/<fingerprint>/``."""
    if os.path.exists(os.path.join(path, MARKER)):
        return True
    if dirs is None:
        dirs = [d for d in _listdir(path) if os.path.isdir(os.path.join(path, d))]
    if ".locks" in dirs:
        return True
    return any(kind in dirs and any(_FP.fullmatch(name) for name in _listdir(os.path.join(path, kind)))
               for kind in KINDS)


def inside_workspace(path: str) -> str | None:
    """The workspace that ``path`` is or lies in (itself or an ancestor), or None."""
    probe = os.path.realpath(path)
    while True:
        if os.path.isdir(probe) and looks_like_workspace(probe):
            return probe
        parent = os.path.dirname(probe)
        if parent == probe:
            return None
        probe = parent


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def remove_local(path: str) -> None:
    """Remove a file, a link (the link only) or a directory tree without following any link."""
    if os.path.islink(path) or not os.path.isdir(path):
        os.remove(path)
    else:
        shutil.rmtree(path)  # unlinks links inside, never follows them
