"""SFT's data: the tokens artifact split by document into two flat memory-mapped token files, and batches.

A fixed hash of ``doc_id`` (:func:`ctstore.split.in_validation`) puts
``val_fraction`` of the documents in validation; their tokens are written, in
document order, to ``val.u32`` and the rest to ``train.u32`` (uint32), cached
per (tokens, split) in the workspace's scratch area. Training windows of
``block_size + 1`` tokens are drawn with a seeded ``torch.Generator``. No
Python token lists.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import numpy as np
import torch

from ..errors import CtstoreError, write_error
from ..formats.tokens import TokenShards, read_doc_ids
from ..location import atomic_path
from ..split import in_validation
from ..workspace import Workspace

__all__ = ["TokenSplit", "batch"]


class TokenSplit:
    """Flat memory-mapped train/validation token arrays of a tokens artifact."""

    def __init__(self, tokens, fraction: float, cache_dir: str, lock=None):
        """The cache is built and opened under ``lock`` (default: the workspace's scratch lock of
        ``<workspace>/tmp/<name>``), so ``ctstore gc`` and a second job building it leave it alone."""
        self.tokens = tokens
        os.makedirs(cache_dir, exist_ok=True)
        self.paths = {s: os.path.join(cache_dir, f"{s}.u32") for s in ("train", "val")}
        with lock or _scratch_lock(cache_dir):
            os.makedirs(cache_dir, exist_ok=True)
            if not all(os.path.exists(p) for p in self.paths.values()):
                self._build(fraction)
            for split, p in self.paths.items():  # checked before mapping: an empty file cannot be mapped
                n = os.path.getsize(p) // 4
                if n < 2:
                    raise CtstoreError(f"{tokens}: the {split} split of the documents (validation fraction "
                                       f"{fraction:g}) has {n} tokens; need more documents or another "
                                       "--val-fraction")
            self.arrays = {s: np.memmap(p, dtype=np.uint32, mode="r") for s, p in self.paths.items()}

    def _build(self, fraction: float) -> None:
        """Write both files under temporary names, renamed into place only once both are complete."""
        cache_dir = os.path.dirname(self.paths["train"])
        try:
            with atomic_path(self.paths["train"]) as train_tmp, atomic_path(self.paths["val"]) as val_tmp:
                files = {"train": open(train_tmp, "wb"), "val": open(val_tmp, "wb")}
                try:
                    self._write(files, fraction)
                    for f in files.values():
                        f.close()  # not quietly: a flush onto a full disk must fail the build
                finally:
                    for f in files.values():
                        _close_quietly(f)
        except OSError as exc:
            if exc.filename is None:  # a write into the cache, not a read of the tokens artifact
                try:
                    os.rmdir(cache_dir)
                except OSError:
                    pass
                raise write_error(cache_dir, "SFT token cache", exc) from None
            raise

    def _write(self, files: dict, fraction: float) -> None:
        shards = TokenShards.from_artifact(self.tokens)  # format-version check; storage options travel
        for i in range(len(shards.shards)):
            values, offsets = shards.read(i)
            val = in_validation(read_doc_ids(shards.shard(i)), fraction)
            per_token = np.repeat(val, np.diff(offsets))
            values = values[offsets[0]:offsets[-1]]
            files["val"].write(values[per_token].tobytes())
            files["train"].write(values[~per_token].tobytes())


def _scratch_lock(cache_dir: str):
    """The workspace's lock on a scratch directory ``<workspace>/tmp/<name>`` (no lock elsewhere)."""
    parent = os.path.dirname(os.path.abspath(cache_dir))
    if os.path.basename(parent) != "tmp":
        return nullcontext()
    return Workspace(os.path.dirname(parent)).scratch_lock(os.path.basename(os.path.abspath(cache_dir)))


def _close_quietly(f) -> None:
    try:
        f.close()
    except OSError:  # flushing onto a full disk: the file is being discarded anyway
        pass


def batch(data: np.ndarray, T: int, B: int, gen: torch.Generator, vocab_map):
    """``B`` random windows of ``data``: inputs (B, T) and targets shifted by one, as model ids."""
    ix = torch.randint(len(data) - T - 1, (B,), generator=gen).numpy()
    chunk = np.stack([np.asarray(data[i: i + T + 1], dtype=np.int64) for i in ix])
    if vocab_map is not None:
        chunk = vocab_map[chunk]
    chunk = torch.from_numpy(chunk)
    return chunk[:, :-1], chunk[:, 1:]
