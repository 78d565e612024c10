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
    # centring E (issue 18) breaks the SVD basis's exact column orthogonality, so the literal layers are
    # nearly (not exactly) scaled permutations
    for model, low, high in ((lit, 0.6, 1.0), (rot, 0.0, 0.5)):
        for block in model.transformer.h:
            share = _row_energy_share(block.attn.c_attn.weight.detach().numpy()[:D])
            assert low <= share.mean() <= high
    assert rep_lit["recipe"] == "literal" and rep_rot["recipe"] == "rotated"
    assert rep_lit["max_row_energy_share"] > 0.6 and rep_rot["max_row_energy_share"] < 0.5
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


# --- issue 18, defect 1: spectrally seeded layers compute distinct functions, Q ≠ K ≠ V ------


def _dc_heavy_embeddings(seed=0, d=D):
    """k0-like embeddings: SVD-basis rows plus one mean (DC) row shared by every token."""
    E = _svd_basis_embeddings(seed)
    if d != D:
        E = np.tile(E, (1, d // D))
    return E + 8 * np.abs(E).mean()


def _attention_outputs(model, seed=0):
    """Each layer's attention output for the same input (token embeddings of one random batch)."""
    from ctstore.model import _rope_cache

    c = model.config
    idx = torch.from_numpy(np.random.default_rng(seed).integers(0, c.vocab_size, (3, 24)))
    cos, sin = _rope_cache(24, c.n_embd // c.n_head, c.rope_base, "cpu")
    with torch.no_grad():
        x = model.transformer.wte(idx)
        return [b.attn(b.ln_1(x), cos, sin).flatten().double() for b in model.transformer.h]


@pytest.mark.parametrize("config", ["tiny", pytest.param("small", marks=pytest.mark.slow)])
def test_spectral_layers_compute_distinct_functions_and_q_k_v_differ(config):
    d = 64 if config == "tiny" else 128
    params = SeedParams(config=config, init="spectral", vocab=300)
    model, _, report = build_seeded_model(_dc_heavy_embeddings(d=d), np.arange(V), params, V)
    outs = _attention_outputs(model)
    for i in range(len(outs)):
        for j in range(i):
            assert abs(float(torch.nn.functional.cosine_similarity(outs[i], outs[j], dim=0))) < 0.5
    for block in model.transformer.h:
        q, k, v = block.attn.c_attn.weight.detach().double().split(d)
        for a, b in ((q, k), (q, v), (k, v)):
            assert not torch.allclose(a, b)
            assert abs(float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])) < 0.5
    assert abs(report["layer_output_cosine"]["mean"]) < 0.5  # reported on outputs, not weight cosines


# --- issue 18, defect 2: K0 seeding is not rank 1 (the DC row), PR of each matrix reported ----


def test_seeding_from_dc_heavy_embeddings_is_not_rank_one_and_reports_participation_ratios():
    def participation_ratio(w):  # independent of ctstore.seeding's
        s2 = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False) ** 2
        return s2.sum() ** 2 / (s2 ** 2).sum()

    model, _, report = build_seeded_model(_dc_heavy_embeddings(), np.arange(V), SeedParams(
        config="tiny", init="spectral", vocab=300), V)
    for l, block in enumerate(model.transformer.h):
        for name in ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"):
            w = block.get_parameter(name).detach().numpy()
            assert participation_ratio(w) > D / 4, (l, name)  # today: ≈ 1 (rank 1 from the DC row)
    assert report["dc_share"] > 0.8  # the mean row dominates the raw EᵀE, as for K0 on the sample corpus
    for l, block in enumerate(model.transformer.h):
        for name in ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"):
            w = block.get_parameter(name).detach().numpy()
            assert report["participation_ratio"][f"{l}.{name}"] == pytest.approx(participation_ratio(w), rel=1e-3)
    from ctstore.seeding import participation_ratio as pr

    assert pr(np.outer(np.arange(1, 5), np.arange(1, 4))) == pytest.approx(1.0) and pr(np.eye(7)) == pytest.approx(7)


# --- issue 18, defect 7: evaluation windows sample the whole validation split ----------------


def test_stated_evaluation_sample_spreads_over_the_whole_split():
    from ctstore.sft.eval import validation_windows

    n, T = 100_000, 64
    w = validation_windows(n, T, 4096)
    assert sum(k for _, k in w) >= 4095 - T and all(k == T for _, k in w)
    starts = [s for s, _ in w]
    assert starts[0] == 0 and starts[-1] + T + 1 == n  # first and last parts of the split both sampled
    assert all(b - a >= T for a, b in zip(starts, starts[1:]))  # no overlap
    assert max(starts) > n / 2  # not only the head (the old sample was tokens 0..4095)
    # the whole split when the sample would cover it: every token after the first predicted once
    full = validation_windows(1000, T, 5000)
    assert sum(k for _, k in full) == 999 and full == validation_windows(1000, T)


# --- issue 18: count-based baselines and the bigram initialisation ---------------------------


def _markov_corpus(n_vocab=120, seed=0):
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.full(n_vocab, 0.05), size=n_vocab)
    cum = P.cumsum(axis=1)

    def chain(n):
        x = np.empty(n, np.int64)
        x[0] = 0
        u = rng.random(n)
        for t in range(1, n):
            x[t] = min(int(np.searchsorted(cum[x[t - 1]], u[t])), n_vocab - 1)
        return x

    return chain(20_000), chain(3_000)


def _naive_witten_bell(train, pairs):
    """Independent reference: dictionaries over the training list, Witten–Bell by its textbook formula."""
    from collections import Counter, defaultdict

    uni, big, follow = Counter(train), Counter(zip(train[:-1], train[1:])), defaultdict(set)
    for a, b in zip(train[:-1], train[1:]):
        follow[a].add(b)
    ctx = Counter(train[:-1])
    N, V = len(train), 1 + max(max(train), max(max(p) for p in pairs))
    out_uni, out_bi = [], []
    for v, w in pairs:
        pu = (uni[w] + 1) / (N + V)
        t = len(follow[v])
        out_uni.append(math.log(pu))
        out_bi.append(math.log((big[(v, w)] + t * pu) / (ctx[v] + t)) if ctx[v] else math.log(pu))
    return math.exp(-np.mean(out_uni)), math.exp(-np.mean(out_bi))


def _lag1(train, n):
    import scipy.sparse as sp

    return sp.csr_matrix((np.ones(len(train) - 1), (train[:-1], train[1:])), shape=(n, n))


def test_count_baselines_match_a_naive_witten_bell_bigram():
    from ctstore.analysis.baselines import compact_counts, count_baselines, window_pairs
    from ctstore.sft.eval import validation_windows

    train, val = _markov_corpus()
    n = 120
    windows = validation_windows(len(val), 32, 1024)
    got = count_baselines(compact_counts(np.bincount(train, minlength=n), _lag1(train, n), None), val, windows, None)
    v, w = window_pairs(val, windows, None)
    uni, bi = _naive_witten_bell(train.tolist(), list(zip(v.tolist(), w.tolist())))
    assert got["unigram"]["ppl"] == pytest.approx(uni, rel=1e-9)
    assert got["bigram_wb"]["ppl"] == pytest.approx(bi, rel=1e-9)
    assert got["bigram_wb"]["ppl"] < got["unigram"]["ppl"]
    # a compact vocabulary merges the rest into <unk> before counting, as the model sees it
    vocab_map = np.minimum(np.arange(n), 80)
    compact = count_baselines(compact_counts(np.bincount(train, minlength=n), _lag1(train, n), vocab_map), val,
                              windows, vocab_map)
    uni_c, bi_c = _naive_witten_bell(vocab_map[train].tolist(),
                                     list(zip(vocab_map[v].tolist(), vocab_map[w].tolist())))
    assert compact["bigram_wb"]["ppl"] == pytest.approx(bi_c, rel=1e-9)


def test_bigram_init_starts_at_its_factorisation_and_far_below_random():
    from ctstore.analysis.baselines import compact_counts, count_baselines, log_conditionals, window_pairs, \
        witten_bell
    from ctstore.seeding import bigram_factors
    from ctstore.seed import BIGRAM_FIT_STEPS
    from ctstore.sft.eval import evaluate, validation_windows

    train, val = _markov_corpus()
    n = 120
    unigram, lag1 = np.bincount(train, minlength=n), _lag1(train, n)
    rank = np.argsort(-unigram, kind="stable")
    E = np.zeros((n, 64), np.float32)
    params = SeedParams(config="tiny", init="bigram", vocab=100, tie_head=False, seed=3)
    model, vocab_map, report = build_seeded_model(E, rank, params, n, unigram, lag1)
    random_model, _, _ = build_seeded_model(E, rank, SeedParams(config="tiny", init="random", vocab=100,
                                                                tie_head=False, seed=3), n)
    step0 = evaluate(model, val, vocab_map, 64, 2048)["ppl"]
    at_random = evaluate(random_model, val, vocab_map, 64, 2048)["ppl"]
    # the factorisation's own perplexity on the same windows
    c = compact_counts(unigram, lag1, vocab_map)
    A, B, _ = bigram_factors(log_conditionals(c), witten_bell(c)[0] + 1.0, 62, BIGRAM_FIT_STEPS, 3)
    v, w = window_pairs(val, validation_windows(len(val), 64, 2048), vocab_map)
    logits = torch.from_numpy(A @ B.T)
    own = math.exp(float(-torch.log_softmax(logits, dim=1)[v, w].mean()))
    assert step0 == pytest.approx(own, rel=0.01)
    baseline = count_baselines(c, val, validation_windows(len(val), 64, 2048), vocab_map)["bigram_wb"]["ppl"]
    assert step0 < 1.2 * baseline and step0 < at_random / 3
    for block in model.transformer.h:  # blocks start as the identity
        assert not block.attn.c_proj.weight.any() and not block.mlp.c_proj.weight.any()
    assert report["bigram_fit"]["fit_ce"] <= report["bigram_fit"]["svd_ce"]
    with pytest.raises(Exception, match="untied"):
        SeedParams(init="bigram")


# --- issue 18, defect 8: committed reports are what today's code renders from their results ------


def _committed_reports():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "docs" / "results"
    return sorted(p for p in root.iterdir() if (p / "results.json").exists())


@pytest.mark.parametrize("folder", _committed_reports(), ids=lambda p: p.name)
def test_committed_report_rerenders_from_its_results_json(folder):
    from ctstore.experiments.ct_vs_random import render_report

    results = json.loads((folder / "results.json").read_text())
    assert "setup" in results and "baselines" in results, f"{folder.name}: results.json predates the registry"
    assert render_report(results) == (folder / "report.md").read_text()
    assert results["baselines"]["bigram_wb"]["ppl"] > 1
    assert {c["id"] for c in results["claims"]} >= {"p113.steps_saved", "p113.layer_diversity"}
