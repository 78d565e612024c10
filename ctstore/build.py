"""Build-or-reuse: how every stage turns a fingerprint into a complete artifact (docs/design.md §1).

:func:`build_artifact` reuses a complete artifact, or takes the artifact's
lock, lets the stage write its files, hashes them and publishes the manifest
last. A failed build leaves nothing that looks complete.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

import fsspec

from .artifact import Artifact
from .errors import CtstoreError, WriteError, write_error
from .integrity import hash_files
from .log import log

if TYPE_CHECKING:
    from .workspace import Workspace

__all__ = ["build_artifact"]


def build_artifact(ws: Workspace, kind: str, fp: str, build, *, force: bool = False,
                   keep_partial: bool = False) -> tuple[Artifact, bool]:
    """Return the complete artifact ``kind/fp``, building it with ``build(path)`` if needed.

    ``build`` writes the artifact's files under ``path`` and returns the manifest
    body; the manifest is published last. Returns ``(artifact, reused)``.

    A failed build (any exception, Ctrl-C included) leaves no manifest, so
    nothing that looks complete. Its partial directory and its scratch
    directory are removed, unless the stage resumes from them
    (``keep_partial``: count, sft) and they hold something to resume from; a
    build refused before writing anything (a plan that does not fit
    ``--memory``) leaves no directory at all. A write that fails for lack of
    room becomes the one-line error ``<path>: cannot write … (<N> free on that
    disk)`` and removes the partial output even of a resumable stage (it is
    what fills the disk).
    """
    existing = _reusable(ws, kind, fp)
    if existing is not None and not force:
        log(f"reusing {kind}/{fp} (complete; --force recomputes)")
        return existing, True
    with ws.lock(kind, fp):
        existing = _reusable(ws, kind, fp)
        if existing is not None and not force:
            log(f"reusing {kind}/{fp} (written by another process)")
            return existing, True
        removing = None
        if existing is not None or ws.read_manifest(kind, fp)[1] is not None:
            removing = ws.replace(kind, fp)  # the old one goes on a thread while the new one is built
        try:
            path = ws.prepare(kind, fp, keep_partial=keep_partial)
            try:
                body = build(path)
                body["files"] = hash_files(ws.artifact_location(kind, fp))
                return ws.publish(kind, fp, body), False
            except BaseException as exc:
                error = _room_error(exc, path, kind)
                # out of room: even a resumable stage removes what it wrote (it is what fills the disk)
                _discard_partial(ws, kind, fp, keep_partial and error is None and not isinstance(exc, WriteError))
                if error is not None:
                    raise error from None
                raise
        finally:
            if removing is not None:
                removing.join()


def _reusable(ws: Workspace, kind: str, fp: str) -> Artifact | None:
    """The complete artifact, or None (also when its manifest is unreadable: it is rebuilt)."""
    manifest, problem = ws.read_manifest(kind, fp)
    if problem is not None:
        log(f"{problem}; rebuilding it")
    return None if manifest is None else Artifact(ws, kind, fp, manifest)


def _discard_partial(ws: Workspace, kind: str, fp: str, keep_partial: bool) -> None:
    """Remove a failed build's directory and scratch (a resumable stage keeps them if they hold files)."""
    targets = [(ws.fs, ws.artifact_path(kind, fp))]
    if ws.is_local:
        targets.append((fsspec.filesystem("file"), os.path.join(ws.root, "tmp", f"{kind}-{fp}")))
    for fs, target in targets:
        try:
            if keep_partial and fs.exists(target) and fs.find(target):
                continue
            if fs.exists(target):
                fs.rm(target, recursive=True)
        except (OSError, ValueError):  # cleaning up must never hide the original error
            pass


def _room_error(exc: BaseException, path: str, kind: str):
    """A one-line ``cannot write`` error when ``exc`` says the disk (or quota) is full, else None."""
    if isinstance(exc, CtstoreError):
        return None
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return write_error(exc.filename or path, f"{kind} artifact", exc)
    text = str(exc)
    if type(exc).__name__ == "SafetensorError" and ("No space left" in text or "StorageFull" in text):
        return write_error(path, f"{kind} artifact", exc)
    return None
