"""The previous-token head of ``seed --init bigram_prev`` (issue 18): arithmetic against independent
references, then the seeded model on the bundled sample corpus."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctstore.previous_token import lag2_factors, previous_token_biases, zero_mean_basis


def _rot(angle: float) -> np.ndarray:
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def _rotary_attention(q0: np.ndarray, k0: np.ndarray, T: int, base: float) -> np.ndarray:
    """Causal softmax(q_i·k_j/√hd) with each pair (2f, 2f+1) of position p rotated by p·θ_f, written
    with explicit 2 × 2 rotation matrices (not ctstore.model's rope)."""
    hd = q0.size
    theta = base ** (-np.arange(0, hd, 2) / hd)

    def at(x, p):
        return np.concatenate([_rot(p * t) @ x[2 * f: 2 * f + 2] for f, t in enumerate(theta)])

    q = np.stack([at(q0, p) for p in range(T)])
    k = np.stack([at(k0, p) for p in range(T)])
    s = q @ k.T / np.sqrt(hd)
    s[np.triu_indices(T, 1)] = -np.inf
    s -= s.max(axis=1, keepdims=True)
    a = np.exp(s)
    return a / a.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("hd,T,base,mass", [(32, 128, 10000.0, 0.95), (32, 64, 10000.0, 0.9), (16, 48, 500.0, 0.99)])
def test_previous_token_biases_put_the_mass_on_the_position_before(hd, T, base, mass):
    q0, k0, lam = previous_token_biases(hd, T, base, mass)
    att = _rotary_attention(q0, k0, T, base)
    prev = att[np.arange(1, T), np.arange(0, T - 1)]
    assert prev.min() >= mass - 1e-6
    assert prev[-1] == pytest.approx(mass, abs=1e-4)  # the smallest scale that reaches it at the last position
    assert att[0, 0] == pytest.approx(1.0)
    # and not a larger scale than needed: at 0.8 λ the last position falls below the target
    q1, k1, _ = np.sqrt(0.8) * q0, np.sqrt(0.8) * k0, None
    assert _rotary_attention(q1, k1, T, base)[T - 1, T - 2] < mass


def test_zero_mean_basis_is_orthonormal_and_blind_to_layernorm_centring():
    Q = zero_mean_basis(9, 8)
    np.testing.assert_allclose(Q.T @ Q, np.eye(8), atol=1e-12)
    np.testing.assert_allclose(Q.sum(axis=0), 0.0, atol=1e-12)
    with pytest.raises(ValueError):
        zero_mean_basis(4, 4)


def test_lag2_factors_is_the_weighted_reduced_rank_regression():
    rng = np.random.default_rng(0)
    V, d, k = 60, 10, 3
    Z = rng.normal(size=(V, d))
    Z[:, -1] = Z[:, 0]  # rank-deficient, as ln_1 of zero-mean rows is
    target = rng.normal(size=(V, V)) + Z @ rng.normal(size=(d, V))
    w = rng.uniform(0.1, 5.0, V)
    W, D, info = lag2_factors(Z, target, w, k)
    fitted = Z @ W @ D.T
    # reference: weighted least squares by lstsq, then the best rank-k fit in the π-weighted norm (Eckart–Young)
    pi = w / w.sum()
    sq = np.sqrt(pi)[:, None]
    coef = np.linalg.lstsq(sq * Z, sq * target, rcond=None)[0]
    U, S, Vt = np.linalg.svd(sq * Z @ coef, full_matrices=False)
    reference = (U[:, :k] * S[:k]) @ Vt[:k] / sq
    np.testing.assert_allclose(fitted, reference, atol=1e-8)
    total = ((sq * target) ** 2).sum()
    assert info["lag2_r2_rank"] == pytest.approx((S[:k] ** 2).sum() / total)
    assert info["lag2_r2_rank"] <= info["lag2_r2_linear"] <= 1


@pytest.fixture(scope="module")
def seeded_pair(sample_counts, sample_tokens, session_ws):
    """``tiny`` models with init bigram and bigram_prev (compact vocabulary 512) and the validation split."""
    from ctstore.formats.counts import CountStore
    from ctstore.seed import SeedParams, build_seeded_model
    from ctstore.sft.data import TokenSplit

    store = CountStore.from_artifact(sample_counts)
    E = np.zeros((len(store.unigram), 8))
    models = {}
    for init in ("bigram", "bigram_prev"):
        params = SeedParams(config="tiny", init=init, vocab=512, tie_head=False, seed=0)
        models[init] = build_seeded_model(E, store.rank, params, len(store.unigram), store.unigram,
                                          store.matrix(1), store.matrix(2))
    val = TokenSplit(sample_tokens, 0.1, session_ws.scratch_dir("tokens", f"{sample_tokens.fingerprint}-prev"))
    return models, val.arrays["val"]


@pytest.mark.slow
def test_bigram_prev_head_attends_to_the_previous_token_on_real_text(seeded_pair):
    from ctstore.seed_prev import previous_token_mass
    from ctstore.sft.eval import validation_windows

    (model, vocab_map, report), val = seeded_pair[0]["bigram_prev"], seeded_pair[1]
    T = model.config.block_size
    idx = torch.as_tensor(np.stack([vocab_map[np.asarray(val[s: s + n], np.int64)]
                                    for s, n in validation_windows(len(val), T, 2048)]))
    assert previous_token_mass(model, idx) >= 0.9
    # through the model's own forward: the step-0 logits at i follow x_{i-1} and (almost) ignore x_{i-2}
    with torch.no_grad():
        base = model(idx)[0]
        prev = idx.clone()
        prev[:, 10] = (prev[:, 10] + 1) % (model.config.vocab_size - 1)
        moved = (model(prev)[0] - base).abs().amax(dim=-1).mean(dim=0)
    assert moved[11] > 0.5  # x_10 is x_{i-1} of position 11: its lag-2 term moves the logits
    assert moved[12] < 0.1 * moved[11]  # two back: only the attention mass off i - 1 reaches it
    assert moved[13:].max() < 0.1 * moved[11]
    for block in model.transformer.h[1:]:
        assert not block.attn.c_proj.weight.any() and not block.mlp.c_proj.weight.any()
    assert report["lag2_fit"]["lag2_r2_rank"] > 0.3


@pytest.mark.slow
def test_bigram_prev_starts_below_bigram_on_the_sample_corpus(seeded_pair):
    """Step-0 validation perplexity on the same windows: the lag-2 head must help (measured: 22.4 → 21.6)."""
    from ctstore.sft.eval import evaluate

    models, val = seeded_pair
    ppl = {init: evaluate(m, val, vm, 64, 4096)["ppl"] for init, (m, vm, _r) in models.items()}
    assert ppl["bigram_prev"] < 0.99 * ppl["bigram"]
