"""Artifact integrity: content hashes of every file, recorded in the manifest and checked on demand.

When an artifact is published, every file under its directory (each Parquet
shard, each Zarr chunk and metadata document, each ``.npy``) is hashed with
BLAKE2b and the map ``relative path → hash`` goes into ``manifest.json``.
``ctstore verify FP`` recomputes them and names each file that is missing,
truncated or altered; for Zarr chunks the path is ``<array>/c/<chunk index>``,
so the message names the array and the chunk. Zarr arrays written by ctstore
also carry a crc32c codec, so a reader that meets a corrupted chunk fails at
once (and ctstore turns that into a one-line error naming array and chunk).
"""

from __future__ import annotations

import hashlib

from ._util import CtstoreError

__all__ = ["hash_files", "verify_artifact", "chunk_error"]

MANIFEST = "manifest.json"


def _hash(fs, path: str) -> tuple[str, int]:
    h = hashlib.blake2b(digest_size=16)
    size = 0
    with fs.open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def hash_files(fs, root: str) -> dict:
    """``{relative path: "hash:size"}`` for every file under ``root`` except the manifest."""
    out = {}
    root = root.rstrip("/")
    for path in sorted(fs.find(root)):
        rel = path[len(root) + 1:] if path.startswith(root) else path
        if rel == MANIFEST or rel.startswith(MANIFEST):
            continue
        digest, size = _hash(fs, path)
        out[rel] = f"{digest}:{size}"
    return out


def verify_artifact(artifact) -> list[str]:
    """Problems found (empty when the artifact is intact)."""
    expected = artifact.manifest.get("files")
    if expected is None:
        return [f"{artifact}: manifest records no file hashes (written by an older ctstore); cannot verify"]
    fs, root = artifact.workspace.fs, artifact.workspace.artifact_path(artifact.kind, artifact.fingerprint)
    problems = []
    for rel, want in expected.items():
        path = f"{root}/{rel}"
        try:
            digest, size = _hash(fs, path)
        except FileNotFoundError:
            problems.append(f"{artifact}: {describe(rel)} is missing")
            continue
        want_digest, want_size = want.split(":")
        if size != int(want_size):
            problems.append(f"{artifact}: {describe(rel)} is truncated or resized ({size} bytes, expected {want_size})")
        elif digest != want_digest:
            problems.append(f"{artifact}: {describe(rel)} is corrupted (content hash differs)")
    return problems


def describe(rel: str) -> str:
    """``counts.zarr/lag_3/indices/c/12`` → ``array counts.zarr/lag_3/indices, chunk 12``."""
    if "/c/" in rel:
        array, _, chunk = rel.partition("/c/")
        return f"array {array}, chunk {chunk.replace('/', ',')}"
    return f"file {rel}"


def chunk_error(url: str, array: str, start: int, stop: int, chunk: int, exc: Exception) -> CtstoreError:
    first, last = start // chunk, max(start, stop - 1) // chunk
    where = f"chunk {first}" if first == last else f"chunks {first}..{last}"
    reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
    return CtstoreError(f"{url}: array {array}, {where} cannot be read ({reason}); run ctstore verify")
