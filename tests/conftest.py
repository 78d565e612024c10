"""Shared fixtures: small real artifacts built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("CTSTORE_NO_PROGRESS", "1")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"


@pytest.fixture(scope="session")
def session_ws(tmp_path_factory):
    from ctstore.workspace import Workspace

    return Workspace(str(tmp_path_factory.mktemp("ws")))


@pytest.fixture(scope="session")
def sample_tokens(session_ws):
    """The bundled sample corpus, tokenized with the default encoding (small shards)."""
    from ctstore.tokenize import TokenizeParams, tokenize_corpus

    return tokenize_corpus([str(SAMPLE)], session_ws, params=TokenizeParams(shard_tokens=200_000))


@pytest.fixture(scope="session")
def sample_counts(session_ws, sample_tokens):
    from ctstore.count import CountParams, count_cooccurrences

    return count_cooccurrences(sample_tokens, session_ws, params=CountParams(lags=10), scheduler="sync")


@pytest.fixture
def ws(tmp_path):
    from ctstore.workspace import Workspace

    return Workspace(str(tmp_path / "ws"))


def write_tokens(ws, docs: list[list[int]], n_vocab: int, row_group_tokens: int = 64, shard_tokens: int = 256,
                 unigram: bool = True):
    """Publish a tokens artifact holding exactly ``docs`` (for counting tests), with its ``unigram.npy`` as
    ``ctstore tokenize`` writes it unless ``unigram`` is False (then counting reads the corpus before laying
    it out)."""
    from ctstore.formats.npy import save_npy
    from ctstore.formats.tokens import UNIGRAM, ShardWriter
    from ctstore.stage import fingerprint

    fp = fingerprint("tokens", 1, {"test_docs": [list(map(int, d)) for d in docs], "V": n_vocab}, {})
    ws.prepare("tokens", fp)
    writer = ShardWriter(ws.artifact_location("tokens", fp), shard_tokens=shard_tokens,
                         row_group_tokens=row_group_tokens)
    for d in docs:
        writer.add(np.asarray(d, dtype=np.uint32), np.array([len(d)], dtype=np.int64))
    shards = writer.close()
    if unigram:
        ids = np.concatenate([np.asarray(d, np.int64) for d in docs] + [np.zeros(0, np.int64)])
        save_npy(ws.artifact_location("tokens", fp).child(UNIGRAM), np.bincount(ids, minlength=n_vocab).astype(np.uint64))
    return ws.publish("tokens", fp, {"format_version": 1, "params": {}, "inputs": {}, "n_vocab": n_vocab,
                                     "tokenizer": "test", "docs": len(docs),
                                     "tokens": sum(map(len, docs)), "shards": shards})


def naive_counts(docs, lag: int) -> dict:
    """Independent reference: a dictionary counter over every document."""
    out: dict = {}
    for d in docs:
        for i in range(len(d) - lag):
            key = (int(d[i]), int(d[i + lag]))
            out[key] = out.get(key, 0) + 1
    return out
