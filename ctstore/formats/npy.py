"""Single ``.npy`` arrays through fsspec (``unigram.npy`` of a tokens artifact); never pickled."""

from __future__ import annotations

import io

import numpy as np

__all__ = ["load_npy", "save_npy"]


def save_npy(fs, path: str, array) -> None:
    """Write a ``.npy`` file through an fsspec filesystem (never pickled)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    with fs.open(path, "wb") as f:
        f.write(buf.getvalue())


def load_npy(fs, path: str):
    with fs.open(path, "rb") as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)
