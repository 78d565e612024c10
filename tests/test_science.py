"""Regression tests for the science of the CT-vs-random experiment (issue 9).

Each test pins one defect: twin MLP units, the degenerate "rotation", statistics
that saw validation text, the ``<unk>`` bookkeeping, the frozen-embedding arms,
and two definitions of validation perplexity.
"""

import json
import math

import numpy as np
import pytest
import torch

from ctstore.formats.model import load_model, save_model
from ctstore.model import PhotonicGPT, get_config
from ctstore.seed import SeedParams, build_seeded_model

V, D = 400, 64


def _svd_basis_embeddings(seed=0):
    """k0-style ``E = U √S`` for the 300 most frequent ids, small noise rows for the rest."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((300, 300)) * np.linspace(4, 0.5, 300)
    u, s, _ = np.linalg.svd(X)
    E = np.zeros((V, D), np.float32)
    E[:300] = u[:, :D] * np.sqrt(s[:D])
    E[300:] = rng.standard_normal((V - 300, D)) * 0.01
    return E


def _seeded(**kw):
    params = SeedParams(config="tiny", init="spectral", vocab=300, **kw)
    return build_seeded_model(_svd_basis_embeddings(), np.arange(V), params, V)


def _max_abs_cosine_between_rows(w: np.ndarray) -> float:
    n = w / np.linalg.norm(w, axis=1, keepdims=True)
    g = np.abs(n @ n.T)
    np.fill_diagonal(g, 0.0)
    return float(g.max())


# --- defect 1: twin hidden units -------------------------------------------------------


def test_mlp_hidden_units_are_distinct_and_stay_distinct_under_sft():
    from ctstore.sft import SftParams
    from ctstore.sft.loop import optimizer_for

    model, _, _ = _seeded()
    for block in model.transformer.h:
        fc = block.mlp.c_fc.weight.detach().numpy().astype(np.float64)
        assert np.unique(fc, axis=0).shape[0] == fc.shape[0]
        assert _max_abs_cosine_between_rows(fc) < 0.9
    opt = optimizer_for(model, SftParams())
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = torch.from_numpy(rng.integers(0, 301, (4, 17)))
        _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for block in model.transformer.h:
        fc = block.mlp.c_fc.weight.detach().numpy().astype(np.float64)
        proj = block.mlp.c_proj.weight.detach().numpy().astype(np.float64).T
        units = np.concatenate([fc, proj], axis=1)  # a twin shares both input and output weights
        d = np.linalg.norm(units[:, None, :] - units[None, :, :], axis=-1)
        np.fill_diagonal(d, np.inf)
        assert d.min() > 1e-3 * np.linalg.norm(units, axis=1).mean()


# --- defect 2: the literal recipe is a scaled permutation -------------------------------


def _row_energy_share(w: np.ndarray) -> np.ndarray:
    sq = w.astype(np.float64) ** 2
    return sq.max(axis=1) / sq.sum(axis=1)


def test_literal_recipe_is_a_scaled_permutation_and_rotated_is_not():
    lit, _, rep_lit = _seeded(recipe="literal")
    rot, _, rep_rot = _seeded(recipe="rotated")
    for model, low, high in ((lit, 0.999, 1.0), (rot, 0.0, 0.5)):
        for block in model.transformer.h:
            share = _row_energy_share(block.attn.c_attn.weight.detach().numpy()[:D])
            assert low <= share.mean() <= high
    assert rep_lit["recipe"] == "literal" and rep_rot["recipe"] == "rotated"
    assert rep_lit["max_row_energy_share"] > 0.999 and rep_rot["max_row_energy_share"] < 0.5
    # rotated = literal in another orthonormal basis Q: wte_rot = wte_lit Q and M_rot = ±M_lit Q row by row
    A = lit.transformer.wte.weight.detach().numpy()[:300].astype(np.float64)
    B = rot.transformer.wte.weight.detach().numpy()[:300].astype(np.float64)
    Q, *_ = np.linalg.lstsq(A, B, rcond=None)
    assert np.allclose(Q.T @ Q, np.eye(D), atol=1e-3)
    M_lit = lit.transformer.h[1].attn.c_attn.weight.detach().numpy()[:D].astype(np.float64)
    M_rot = rot.transformer.h[1].attn.c_attn.weight.detach().numpy()[:D].astype(np.float64)
    expected = M_lit @ Q
    cos = np.sum(expected * M_rot, axis=1) / (np.linalg.norm(expected, axis=1) * np.linalg.norm(M_rot, axis=1))
    assert np.all(np.abs(cos) > 0.999)


# --- defect 3: statistics must not see validation documents ----------------------------


def test_train_only_counts_never_see_validation_documents(ws, tmp_path):
    from conftest import naive_counts, write_tokens

    from ctstore.count import CountParams, count_cooccurrences
    from ctstore.formats.counts import CountStore
    from ctstore.sft import TokenSplit

    rng = np.random.default_rng(0)
    docs = [list(rng.integers(0, 20, 30)) + [100 + k, 100 + k] for k in range(40)]  # id 100+k only in doc k
    tokens = write_tokens(ws, docs, n_vocab=200)
    fraction = 0.3
    split = TokenSplit(tokens, fraction, str(tmp_path / "split"))  # sft's own split
    val_ids = set(split.arrays["val"].tolist())
    val_docs = [k for k in range(40) if 100 + k in val_ids]
    train_docs = [d for k, d in enumerate(docs) if k not in val_docs]
    assert 0 < len(val_docs) < 40
    counts = count_cooccurrences(tokens, ws, params=CountParams(lags=2, val_fraction=fraction), scheduler="sync")
    store = CountStore.from_artifact(counts)
    unigram = store.unigram
    for k in val_docs:
        assert unigram[100 + k] == 0
    assert np.array_equal(unigram, np.bincount(np.concatenate(train_docs), minlength=200))
    for lag in (1, 2):
        got = store.matrix(lag).tocoo()
        assert dict(zip(zip(got.row.tolist(), got.col.tolist()), got.data.tolist())) == naive_counts(train_docs, lag)
    assert set(store.rank[: int(np.count_nonzero(unigram))].tolist()).isdisjoint({100 + k for k in val_docs})
    assert counts.manifest["params"]["val_fraction"] == fraction
    assert counts.manifest["tokens"] == sum(map(len, train_docs))


# --- defect 4: <unk> rate and coverage beside the perplexity ---------------------------


def test_evaluate_reports_unk_rate_coverage_and_known_loss_against_a_naive_loop():
    from ctstore.sft import evaluate

    torch.manual_seed(0)
    model = PhotonicGPT(get_config("tiny", vocab_size=11, block_size=8))
    vocab_map = np.full(50, 10, np.int64)
    vocab_map[:10] = np.arange(10)  # ids 10..49 are <unk> (model id 10)
    data = np.random.default_rng(3).integers(0, 14, 61).astype(np.uint32)
    got = evaluate(model, data, vocab_map, T=8, batch_size=3)
    mapped = torch.from_numpy(vocab_map[data.astype(np.int64)])
    losses = []
    for start in range(0, 60, 8):  # naive: one window at a time, every token after the first once
        n = min(8, 60 - start)
        with torch.no_grad():
            logits, _ = model(mapped[None, start: start + n])
        losses.append(torch.nn.functional.cross_entropy(logits[0], mapped[start + 1: start + n + 1],
                                                        reduction="none"))
    losses = torch.cat(losses).double()
    targets = mapped[1:]
    assert got["tokens"] == 60 == losses.numel()
    assert got["loss"] == pytest.approx(float(losses.mean()), rel=1e-6)
    assert got["unk_rate"] == pytest.approx(float((targets == 10).double().mean()))
    assert got["loss_known"] == pytest.approx(float(losses[targets != 10].mean()), rel=1e-6)
    ids = np.unique(data[1:])
    assert got["type_coverage"] == pytest.approx(np.mean(ids < 10))


def test_corpus_vocabulary_leaves_no_in_corpus_token_unknown():
    from ctstore.seed import corpus_vocab

    unigram = np.zeros(V, np.int64)
    unigram[[3, 7, 50, 299, 333]] = [5, 9, 1, 2, 4]
    rank = np.argsort(-unigram, kind="stable")
    n = corpus_vocab(unigram)
    _, vocab_map, report = build_seeded_model(_svd_basis_embeddings(), rank, SeedParams(init="random", vocab=n), V)
    assert n == 5 and report["model_vocab"] == 6
    assert np.all(vocab_map[[3, 7, 50, 299, 333]] < 5)
    assert np.all(np.delete(vocab_map, [3, 7, 50, 299, 333]) == 5)


# --- defect 5: frozen unscaled embeddings, untied head ----------------------------------


def test_unscaled_embedding_and_untied_head(tmp_path):
    from ctstore.sft import SftParams
    from ctstore.sft.loop import optimizer_for

    E = _svd_basis_embeddings()
    model, vocab_map, report = _seeded(embed_scale="unscaled", tie_head=False)
    wte = model.transformer.wte.weight.detach().numpy()
    assert np.allclose(np.linalg.norm(wte[:300], axis=1), np.linalg.norm(E[:300], axis=1), rtol=1e-4)
    matched, _, _ = _seeded()
    torch.manual_seed(0)
    random = PhotonicGPT(get_config("tiny", vocab_size=301))
    assert torch.allclose(matched.transformer.wte.weight.norm(), random.transformer.wte.weight.norm(), rtol=1e-5)
    assert report["embed_scale"] == "unscaled" and report["tie_head"] is False
    assert model.output_head is model.head and model.head.weight is not model.transformer.wte.weight
    # frozen embedding: the untied head still trains
    model.transformer.wte.weight.requires_grad_(False)
    opt = optimizer_for(model, SftParams())
    before = model.head.weight.detach().clone()
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 301, (2, 9)))
    model(x[:, :-1], x[:, 1:])[1].backward()
    opt.step()
    assert not torch.equal(before, model.head.weight) and torch.equal(model.transformer.wte.weight.detach(),
                                                                         torch.from_numpy(wte))
    save_model(model, str(tmp_path), vocab_map)
    loaded, _, _ = load_model(str(tmp_path))
    assert torch.equal(loaded.head.weight, model.head.weight) and not loaded.config.tie_head


# --- defect 6: one definition of validation perplexity ----------------------------------


def _publish_model(ws, vocab: int, tokenizer: str):
    from ctstore.stage import fingerprint
    from ctstore.workspace import build_artifact

    def build(path):
        torch.manual_seed(0)
        save_model(PhotonicGPT(get_config("tiny", vocab_size=vocab, block_size=16)), path, None,
                   {"tokenizer": tokenizer, "init": "random"})
        return {"format_version": 1, "params": {}, "inputs": {}, "tokenizer": tokenizer, "init": "random"}

    return build_artifact(ws, "model", fingerprint("model", 1, {"test": vocab}, {}), build)[0]


def test_eval_of_a_run_equals_its_final_logged_validation_loss(ws, capsys):
    from conftest import write_tokens

    from ctstore.cli import main
    from ctstore.sft import SftParams, train_model

    rng = np.random.default_rng(0)
    tokens = write_tokens(ws, [list(rng.integers(0, 60, 150)) for _ in range(40)], n_vocab=60,
                          row_group_tokens=512, shard_tokens=4096)
    run = train_model(_publish_model(ws, 60, "test"), tokens, ws,
                      params=SftParams(steps=6, eval_every=3, batch_size=4, block_size=12, warmup=2))
    lines = [json.loads(x) for x in open(f"{run.path}/metrics.jsonl")]
    logged = [x["val_loss"] for x in lines if "val_loss" in x][-1]
    assert main(["eval", run.fingerprint, "--tokens", tokens.fingerprint, "-w", ws.root, "-q"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["loss"] == pytest.approx(logged, rel=1e-9)
    assert printed["loss"] == pytest.approx(run.manifest["final_val_loss"], rel=1e-9)
    assert printed["tokens"] == run.manifest["eval_tokens"]
    assert math.isfinite(printed["ppl"])


# --- mechanics: paired per-seed summary ---------------------------------------------------


class _FakeRun:
    def __init__(self, tmp_path, name, seed, steps, curve, schedule=None):
        self.path = str(tmp_path / name)
        import os

        os.makedirs(self.path)
        with open(f"{self.path}/metrics.jsonl", "w") as f:
            for s, p in curve:
                f.write(json.dumps({"step": s, "val_ppl": p}) + "\n")
        final = curve[-1][1]
        self.manifest = {"params": {"seed": seed, "steps": schedule or steps, "eval_every": 10,
                                    "freeze_embeddings": False},
                         "steps": steps, "final_val_ppl": final, "final_val_loss": math.log(final),
                         "train_seconds": 1.0, "flops": 1.0, "final_val_unk_rate": 0.1,
                         "final_val_ppl_known": final * 0.9, "val_type_coverage": 0.8}


def test_summary_pairs_each_seed_with_the_random_run_of_the_same_seed(tmp_path):
    from ctstore.experiments.ct_vs_random_summary import summarize

    runs = {
        "random": [_FakeRun(tmp_path, "r0", 0, 30, [(0, 100), (10, 50), (20, 40), (30, 30)]),
                   _FakeRun(tmp_path, "r1", 1, 30, [(0, 100), (10, 60), (20, 45), (30, 35)])],
        "k0": [_FakeRun(tmp_path, "k0", 0, 30, [(0, 90), (10, 32), (20, 29), (30, 25)]),
               _FakeRun(tmp_path, "k1", 1, 30, [(0, 90), (10, 34), (20, 33), (30, 31)])],
        "random_long": [_FakeRun(tmp_path, "l0", 0, 120, [(0, 100), (60, 20), (120, 10)]),
                        _FakeRun(tmp_path, "l1", 1, 120, [(0, 100), (60, 21), (120, 11)])],
    }
    out = summarize(runs)
    k0 = out["k0"]
    # seed 0 reaches random-seed-0's 30 at step 20, seed 1 reaches random-seed-1's 35 at step 10
    assert [p["steps_to_random_final"] for p in k0["per_seed"]] == [20, 10]
    assert k0["step_saving_per_seed"] == [10, 20] and k0["steps_to_random_final"] == 15.0
    assert k0["paired_ppl_diff_vs_random"] == [-5, -4]
    assert k0["paired_loss_diff_vs_random"] == pytest.approx([math.log(25 / 30), math.log(31 / 35)])
    assert "steps_to_random_final" not in out["random_long"]  # another schedule length: no step figure
    assert out["random"]["step_saving_per_seed"] == [0, 0]
    assert k0["unk_rate"] == pytest.approx(0.1) and k0["type_coverage"] == pytest.approx(0.8)


# --- improvement arm: output side from unigram statistics ---------------------------------


def test_unigram_prior_fits_log_frequencies_through_the_final_layernorm_bias():
    rng = np.random.default_rng(4)
    unigram = rng.integers(1, 1000, V).astype(np.int64)
    rank = np.argsort(-unigram, kind="stable")
    params = SeedParams(config="tiny", init="embeddings", vocab=300, unigram_prior=True)
    model, _, report = build_seeded_model(_svd_basis_embeddings(), rank, params, V, unigram)
    p = np.append(unigram[rank[:300]] + 1.0, unigram[rank[300:]].sum() + 1.0)
    target = np.log(p / p.sum())
    target -= target.mean()
    W = model.transformer.wte.weight.detach().double().numpy()
    b = model.transformer.ln_f.bias.detach().double().numpy()
    # normal equations of the least-squares fit: the residual is orthogonal to every column of W
    resid = W @ b - target
    assert np.abs(W.T @ resid).max() < 1e-6 * np.abs(W.T @ target).max()
    assert report["unigram_prior_r2"] == pytest.approx(1 - resid @ resid / (target @ target), rel=1e-6)
    # a zero residual stream gives logits b Wᵀ: tokens ordered like the fitted prior
    with torch.no_grad():
        logits = model.output_head(model.transformer.ln_f(torch.zeros(1, 64)))[0].double().numpy()
    assert np.allclose(logits, W @ b, atol=1e-5)
    plain, _, _ = build_seeded_model(_svd_basis_embeddings(), rank, SeedParams(config="tiny", init="embeddings",
                                                                                 vocab=300), V)
    assert torch.count_nonzero(plain.transformer.ln_f.bias) == 0


def test_frozen_embedding_keeps_statistical_rows_and_trains_the_unk_row_like_every_arm(ws):
    from conftest import write_tokens

    from ctstore.sft import SftParams, train_model
    from ctstore.stage import fingerprint
    from ctstore.workspace import build_artifact

    rng = np.random.default_rng(2)
    tokens = write_tokens(ws, [list(rng.integers(0, 60, 150)) for _ in range(30)], n_vocab=60,
                          row_group_tokens=512, shard_tokens=4096)
    vocab_map = np.minimum(np.arange(60), 40)  # ids >= 40 are <unk> (model id 40)

    def build(path):
        torch.manual_seed(0)
        save_model(PhotonicGPT(get_config("tiny", vocab_size=41, block_size=16)), path, vocab_map,
                   {"tokenizer": "test", "init": "spectral"})
        return {"format_version": 1, "params": {}, "inputs": {}, "tokenizer": "test", "init": "spectral"}

    model = build_artifact(ws, "model", fingerprint("model", 1, {"unk-test": 1}, {}), build)[0]
    run = train_model(model, tokens, ws, params=SftParams(steps=3, eval_every=3, batch_size=4, block_size=12,
                                                          warmup=1, freeze_embeddings=True))
    before, _, _ = load_model(model.path)
    after, _, _ = load_model(f"{run.path}/model")
    w0, w1 = before.transformer.wte.weight, after.transformer.wte.weight
    assert torch.equal(w0[:40], w1[:40])
    assert not torch.equal(w0[40], w1[40])
    assert not torch.equal(before.transformer.h[0].mlp.c_fc.weight, after.transformer.h[0].mlp.c_fc.weight)
    assert run.manifest["frozen_embedding_rows"] == "all but <unk>"
