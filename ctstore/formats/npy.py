"""Single ``.npy`` arrays at a :class:`~ctstore.location.Location` (``unigram.npy`` of a tokens artifact)."""

from __future__ import annotations

import io

import numpy as np

from ..location import Location

__all__ = ["load_npy", "save_npy"]


def save_npy(location: Location, array) -> None:
    """Write ``array`` as a ``.npy`` file (never pickled), local or remote."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    with location.open("wb") as f:
        f.write(buf.getvalue())


def load_npy(location: Location) -> np.ndarray:
    return np.load(io.BytesIO(location.read_bytes()), allow_pickle=False)
