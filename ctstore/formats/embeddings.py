"""The ``embeddings`` artifact: ``embeddings.zarr``, written by stage ``k0``, read by ``seed`` and the analyses.

Arrays (Zarr v3, Blosc-LZ4 + crc32c like the counts):

* ``E (V, d) float32``: row = token id; inactive tokens hold small seeded random rows;
* ``spectrum (d,) float32``: singular values, descending;
* ``active (V_eff,) uint32``: the active token ids in frequency-rank order;
* ``first_row (V_eff,) float64``: only for the exact circulant path, ``r = g ⊛ k0``
  with ``W[i, j] = r[(j − i) mod V_eff]``.

Attributes name the operator, kernel, method, transform, V_eff, coverage,
lags, solver and timings, and carry ``format_version``.
"""

from __future__ import annotations

import numpy as np

from ..errors import CtstoreError
from ..location import Location
from . import require
from .counts import compressors

__all__ = ["FORMAT_VERSION", "write_embeddings", "load_embeddings"]

FORMAT_VERSION = 1
ARRAYS = ("E", "spectrum", "active")


def write_embeddings(location: Location, E: np.ndarray, spectrum: np.ndarray, active: np.ndarray,
                     attrs: dict, first_row: np.ndarray | None = None) -> None:
    """Write ``embeddings.zarr`` at ``location`` (replacing what is there); ``format_version`` is added."""
    group = location.open_group("w")
    group.create_array("E", data=E, chunks=(min(E.shape[0], 16384), E.shape[1]), compressors=compressors())
    group.create_array("spectrum", data=spectrum, compressors=compressors())
    group.create_array("active", data=active.astype(np.uint32), compressors=compressors())
    if first_row is not None:
        group.create_array("first_row", data=first_row.astype(np.float64), compressors=compressors())
    group.attrs.update({**attrs, "format_version": FORMAT_VERSION})


def load_embeddings(artifact):
    """``(E, spectrum, active, attrs)`` of an embeddings artifact.

    Every chunk the manifest lists must be present (Zarr would read an absent
    one as zeros); a missing or damaged chunk is a one-line error.
    """
    require(artifact, "embeddings")
    from ..integrity import ChunkIndex

    so = None if artifact.workspace.is_local else (artifact.workspace.storage_options or None)
    location = Location(artifact.child("embeddings.zarr"), so or {})
    chunks = ChunkIndex.from_manifest(location.url, artifact.manifest, so)
    for name in ARRAYS:
        chunks.require(name)
    try:
        group = location.open_group("r")
        return group["E"][:], group["spectrum"][:], group["active"][:], dict(group.attrs)
    except (ValueError, OSError, RuntimeError, KeyError) as exc:  # e.g. a chunk failing its crc32c
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CtstoreError(f"{location.url}: cannot be read ({reason}); run ctstore verify") from None
