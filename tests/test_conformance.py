"""Store conformance: every artifact kind, on every kind of store, through one storage interface.

zarr's ``StoreTests`` pattern: one test class, run for each store (a local
directory, ``memory://`` and S3 served by moto on 127.0.0.1) and each artifact
kind of :data:`ctstore.formats.KINDS`. Per kind, :data:`EXAMPLES` holds a
writer of a tiny artifact (through the kind's format module, on the artifact's
``Location``) and the independent reference its reader must give back. A kind
added to the registry without an example fails :func:`test_every_kind_has_an_example`.

Each case writes, publishes (``build_artifact``: hashes, manifest last),
verifies, reads back through the kind's registered reader, damages one file
(``verify`` must notice) and garbage-collects a partial artifact of the kind.
"""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pytest

from ctstore import formats
from ctstore.testing import s3_server

# -- tiny artifacts, one per kind: write(location) -> manifest body, check(read back, written) ----------------

DOCS = [[1, 2, 3, 1, 2], [4, 1, 2], [5, 5, 0, 1]]
N_VOCAB = 6


def _tokens_write(location):
    from ctstore.formats.tokens import TokensWriter

    writer = TokensWriter(location, N_VOCAB, shard_tokens=6)
    for doc in DOCS:
        writer.add(np.asarray(doc, np.uint32), np.array([len(doc)], np.int64))
    return {**writer.close(), "tokenizer": "test", "params": {}, "inputs": {}}


def _tokens_check(shards, artifact):
    values = [shards.read(i)[0] for i in range(len(shards.shards))]
    assert np.concatenate(values).tolist() == sum(DOCS, [])
    assert shards.n_tokens == sum(map(len, DOCS))


def _lag1():
    dense = np.zeros((N_VOCAB, N_VOCAB), np.int64)
    for doc in DOCS:
        for a, b in zip(doc, doc[1:]):
            dense[a, b] += 1
    return dense


def _counts_write(location):
    import scipy.sparse as sp

    from ctstore.formats.counts import FORMAT_VERSION, STORE, CountStoreWriter

    unigram = np.bincount(sum(DOCS, []), minlength=N_VOCAB).astype(np.uint64)
    csr = sp.csr_matrix(_lag1())
    writer = CountStoreWriter(location.child(STORE), unigram, 1, "test-tokens", "test")
    writer.write_lag(1, csr.indptr.astype(np.int64), csr.indices.astype(np.uint32), csr.data.astype(np.uint32))
    return {"format_version": FORMAT_VERSION, "params": {"lags": 1}, "inputs": {}, "tokenizer": "test"}


def _counts_check(store, artifact):
    assert store.matrix(1).toarray().tolist() == _lag1().tolist()
    assert store.unigram.tolist() == np.bincount(sum(DOCS, []), minlength=N_VOCAB).tolist()


EMBEDDING = np.arange(N_VOCAB * 4, dtype=np.float32).reshape(N_VOCAB, 4) / 7


def _embeddings_write(location):
    from ctstore.formats.embeddings import FORMAT_VERSION, write_embeddings

    write_embeddings(location.child("embeddings.zarr"), EMBEDDING, np.array([4.0, 3, 2, 1]),
                     np.arange(N_VOCAB - 1), {"operator": "test"})
    return {"format_version": FORMAT_VERSION, "params": {}, "inputs": {}, "operator": "test", "dim": 4}


def _embeddings_check(result, artifact):
    E, spectrum, active, attrs = result
    assert np.array_equal(E, EMBEDDING)
    assert spectrum.tolist() == [4.0, 3, 2, 1] and active.tolist() == list(range(N_VOCAB - 1))
    assert attrs["operator"] == "test"


def _tiny_model():
    import torch

    from ctstore.model import PhotonicGPT, get_config

    torch.manual_seed(0)
    return PhotonicGPT(get_config("tiny", vocab_size=N_VOCAB, block_size=8))


VOCAB_MAP = np.array([0, 1, 2, 3, 5, 4, 5, 5])  # a compact vocabulary: tokenizer ids 4, 6, 7 are unknown (5)


def _model_write(location):
    from ctstore.formats.model import save_model

    save_model(_tiny_model(), location, VOCAB_MAP, {"tokenizer": "test", "init": "random"})
    return {"format_version": 2, "params": {}, "inputs": {}, "tokenizer": "test", "init": "random"}


def _same_model(loaded):
    reference = _tiny_model().state_dict()
    state = loaded.state_dict()
    assert state.keys() == reference.keys()
    assert all(bool((state[k] == reference[k]).all()) for k in reference)


def _model_check(result, artifact):
    model, vocab_map, raw = result
    _same_model(model)
    assert vocab_map.tolist() == VOCAB_MAP.tolist() and raw["init"] == "random"


METRICS = [{"step": 0, "val_loss": 2.5, "val_ppl": 12.18}, {"step": 1, "loss": 2.4, "lr": 1e-3},
           {"step": 2, "loss": 2.2, "val_loss": 2.3, "val_ppl": 9.97}]


def _run_write(location):
    from ctstore.formats.model import RUN_MODEL, save_model
    from ctstore.formats.run import write_metrics

    write_metrics(location, METRICS)
    save_model(_tiny_model(), location.child(RUN_MODEL), None, {"tokenizer": "test", "init": "spectral"})
    return {"format_version": 2, "params": {"freeze_embeddings": True}, "inputs": {}, "init": "spectral",
            "steps": 2, "final_val_ppl": 9.97, "frozen_embedding_rows": "all", "tie_head": True}


def _run_check(rows, artifact):
    from ctstore.formats.model import load_model, model_dir
    from ctstore.formats.run import eval_curve

    assert rows == METRICS
    assert eval_curve(artifact) == ([0, 2], [2.5, 2.3])
    _same_model(load_model(model_dir(artifact))[0])


RESULTS = {"claims": [{"id": "c1", "verdict": "consistent"}, {"id": "c2", "verdict": "inconclusive"}],
           "summary": {"arms": 2}}
REPORT_TEXT = "# report\n\nα: two arms\n"


def _report_write(location):
    from ctstore.formats.report import REPORT, write_results, write_text

    write_results(location, RESULTS)
    write_text(location.child(REPORT), REPORT_TEXT)
    return {"format_version": 1, "params": {"experiment": "test"}, "inputs": {}, "report": REPORT}


def _report_check(results, artifact):
    from ctstore.formats.report import read_report

    assert results == RESULTS
    assert read_report(artifact) == REPORT_TEXT


EXAMPLES = {
    "tokens": (_tokens_write, _tokens_check),
    "counts": (_counts_write, _counts_check),
    "embeddings": (_embeddings_write, _embeddings_check),
    "model": (_model_write, _model_check),
    "run": (_run_write, _run_check),
    "report": (_report_write, _report_check),
}


def test_every_kind_has_an_example():
    """A kind added to ``formats.KINDS`` must come with a conformance example (and none is left stale)."""
    assert set(EXAMPLES) == {k.name for k in formats.KINDS}


def test_each_kind_reads_through_its_own_format_module():
    import importlib

    for record in formats.KINDS:
        assert record.reader.startswith(record.module + ":"), record
        assert importlib.import_module(record.module).__name__ == record.module
        assert formats.kind(record.plural) is record and formats.kind(record.name) is record
    assert formats.READABLE_VERSIONS == {k.name: k.versions for k in formats.KINDS}


# -- stores ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_endpoint():
    with s3_server("conformance") as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "memory", pytest.param("s3", marks=pytest.mark.slow)])
def store(request, tmp_path):
    from ctstore.workspace import Workspace

    if request.param == "local":
        yield Workspace(str(tmp_path / "ws"))
        return
    name = f"conformance-{uuid.uuid4().hex[:8]}"
    if request.param == "memory":
        ws = Workspace(f"memory://{name}")
        yield ws
        ws.fs.rm(ws.root, recursive=True)
        return
    endpoint = request.getfixturevalue("s3_endpoint")
    options = {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": endpoint,
                                                                  "region_name": "us-east-1"}}
    yield Workspace(f"s3://conformance/{name}", storage_options=options)


def _build(ws, kind: str):
    from ctstore.build import build_artifact

    fp = uuid.uuid4().hex[:20]
    write = EXAMPLES[kind][0]
    return build_artifact(ws, kind, fp, lambda path: write(ws.artifact_location(kind, fp)))[0]


@pytest.mark.parametrize("kind", [k.name for k in formats.KINDS])
class TestStoreConformance:
    def test_write_publish_verify_read(self, store, kind):
        from ctstore.integrity import verify_artifact

        art = _build(store, kind)
        again = store.get(f"{kind}/{art.fingerprint}")
        assert again.manifest == json.loads(art.location.child("manifest.json").read_bytes())
        files = again.manifest["files"]
        assert files and all(store.fs.exists(f"{art.location.path}/{rel}") for rel in files)
        assert verify_artifact(again) == []
        EXAMPLES[kind][1](formats.kind(kind).read(again), again)
        assert [a.fingerprint for a in store.list(kind)] == [art.fingerprint]
        if not store.is_local:  # nothing went to a local directory named after the remote path
            assert not os.path.exists(store.root)

    def test_verify_notices_a_damaged_file(self, store, kind):
        from ctstore.integrity import verify_artifact

        art = _build(store, kind)
        victim = sorted(art.manifest["files"])[0]
        where = art.location.child(victim)
        where.write_atomic(where.read_bytes() + b"!")
        problems = verify_artifact(art)
        assert len(problems) == 1 and "truncated or resized" in problems[0]

    def test_gc_removes_a_partial_artifact_and_keeps_the_complete_one(self, store, kind):
        art = _build(store, kind)
        store.prepare(kind, "0" * 20)
        partial = store.artifact_location(kind, "0" * 20)
        EXAMPLES[kind][0](partial)  # written, never published: no manifest
        removed = store.gc()
        assert removed == [partial.path]
        assert not store.fs.exists(partial.path)
        assert [a.fingerprint for a in store.list()] == [art.fingerprint]
        from ctstore.integrity import verify_artifact

        assert verify_artifact(store.get(art.fingerprint)) == []


# -- the stages that write model, run and report artifacts, on a remote workspace ---------------------------------

def _model_artifact(ws, vocab: int):
    from ctstore.build import build_artifact
    from ctstore.formats.model import save_model
    from ctstore.model import PhotonicGPT, get_config

    def build(path):
        import torch

        torch.manual_seed(0)
        model = PhotonicGPT(get_config("tiny", vocab_size=vocab, block_size=8))
        save_model(model, ws.artifact_location("model", "f" * 20), None, {"tokenizer": "test", "init": "random"})
        return {"format_version": 2, "params": {}, "inputs": {}, "tokenizer": "test", "init": "random"}

    return build_artifact(ws, "model", "f" * 20, build)[0]


@pytest.mark.slow
def test_sft_trains_on_a_memory_workspace_and_publishes_there(tmp_path, monkeypatch):
    from conftest import write_tokens

    from ctstore.formats.run import read_metrics
    from ctstore.integrity import verify_artifact
    from ctstore.sft import SftParams, train_model
    from ctstore.workspace import Workspace

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the local working copy goes under tmp_path
    ws = Workspace(f"memory://sft-{uuid.uuid4().hex[:8]}")
    rng = np.random.default_rng(0)
    tokens = write_tokens(ws, [rng.integers(0, 32, 60).tolist() for _ in range(30)], 32)
    run = train_model(_model_artifact(ws, 32), tokens, ws,
                      params=SftParams(steps=4, eval_every=2, batch_size=2, block_size=8, warmup=1))
    assert {"metrics.jsonl", "checkpoint.safetensors", "model/model.safetensors"} <= set(run.manifest["files"])
    assert verify_artifact(run) == []
    assert [r["step"] for r in read_metrics(run) if "val_loss" in r] == [0, 2, 4]
    assert read_metrics(run)[-1]["val_loss"] == pytest.approx(run.manifest["final_val_loss"])
    formats.kind("model").read(run)  # the trained model loads from the memory store
    assert not os.path.exists(ws.root)
    assert not os.path.exists(os.path.join(str(tmp_path), "ctstore-scratch", f"run-{run.fingerprint}"))
    ws.fs.rm(ws.root, recursive=True)


@pytest.mark.slow
def test_crystallize_on_a_memory_workspace_publishes_its_files_there(tmp_path, monkeypatch):
    """The bug behind this class: crystallize on memory:// published ``"files": {}`` and wrote to a local
    directory named after the remote path, and verify called it intact."""
    from conftest import write_tokens

    from ctstore.count import CountParams, count_cooccurrences
    from ctstore.crystallize import HARMONIC, CrystallizeParams, crystallize_model
    from ctstore.integrity import verify_artifact
    from ctstore.workspace import Workspace

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    ws = Workspace(f"memory://crystallize-{uuid.uuid4().hex[:8]}")
    rng = np.random.default_rng(1)
    docs = [(rng.zipf(1.3, 400) % 300).tolist() for _ in range(40)]
    counts = count_cooccurrences(write_tokens(ws, docs, 300, shard_tokens=4096), ws, params=CountParams(lags=4),
                                 scheduler="sync")
    art = crystallize_model(counts, ws, scheduler="sync", params=CrystallizeParams(config="tiny", vocab=96,
                                                                                   power_iters=1))
    assert {"model.safetensors", "config.json", "vocab.safetensors", HARMONIC} <= set(art.manifest["files"])
    assert verify_artifact(art) == []
    model, vocab_map, raw = formats.kind("model").read(art)
    assert raw["init"] == "crystallize" and vocab_map.max() == 96
    assert not os.path.exists(ws.root)
    ws.fs.rm(ws.root, recursive=True)
