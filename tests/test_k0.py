"""K0 and randomized SVD against independent numpy/scipy references on real counts."""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import zarr

from ctstore.errors import CtstoreError
from ctstore.embed.circulant import circulant_matrix, circulant_svd, literal_k0
from ctstore.formats.counts import CountStore
from ctstore.embed import K0Params, embed_counts, load_embeddings


def reference_x(counts, n: int, lags: int, symmetric=False, weights=None) -> np.ndarray:
    """X = log1p(Σ w_k lag_k) on the top-n tokens in rank order, built straight from the store."""
    store = CountStore.from_artifact(counts)
    active = store.rank[:n].astype(np.int64)
    D = None
    for k in range(1, lags + 1):
        m = store.matrix(k).astype(np.float64) * (weights[k - 1] if weights else 1.0)
        D = m if D is None else D + m
    D = D[active][:, active].toarray()
    if symmetric:
        D = D + D.T
    return np.log1p(D)


def first_row(artifact):
    return zarr.open_group(artifact.child("embeddings.zarr"), mode="r")["first_row"][:]


@pytest.mark.parametrize("n,lags,symmetric", [(512, 3, False), (4096, 10, False), (1024, 2, True)])
def test_exact_k0_equals_literal_numpy_formula(session_ws, sample_counts, n, lags, symmetric):
    emb = embed_counts(sample_counts, session_ws, scheduler="sync",
                       params=K0Params(dim=16, v_eff=n, lags=lags, symmetric=symmetric))
    x = reference_x(sample_counts, n, lags, symmetric)
    literal = literal_k0(x)  # numpy fft2 in float64
    exact = circulant_matrix(first_row(emb))
    assert np.abs(literal - exact).max() <= 1e-6 * np.abs(literal).max()


def test_literal_w_is_circulant_with_paired_spectrum(sample_counts):
    n = 512
    w = literal_k0(reference_x(sample_counts, n, 2))
    for i in (1, 17, 300):  # every row is the first row shifted
        assert np.allclose(w[i], np.roll(w[0], i), rtol=0, atol=1e-9 * np.abs(w).max())
    s = np.linalg.svd(w, compute_uv=False)
    # singular values come in equal pairs except modes 0 and n/2: check the pairing numerically
    fft_mags = np.abs(np.fft.rfft(w[0]))
    paired = fft_mags[1:n // 2]
    assert np.allclose(np.sort(np.concatenate([fft_mags[[0, n // 2]], paired, paired]))[::-1], s, rtol=1e-8,
                       atol=1e-9 * s[0])


def test_embedding_gram_matches_numpy_svd_of_literal_w(session_ws, sample_counts):
    n, lags = 256, 2
    w = literal_k0(reference_x(sample_counts, n, lags))
    u, s, _ = np.linalg.svd(w)
    d = next(d for d in range(12, 40) if s[d - 1] > s[d] * (1 + 1e-6))  # a cut that splits no pair
    emb = embed_counts(sample_counts, session_ws, scheduler="sync", params=K0Params(dim=d, v_eff=n, lags=lags))
    E, spectrum, active, attrs = load_embeddings(emb)
    rows = E[active].astype(np.float64)
    ref = (u[:, :d] * s[:d]) @ u[:, :d].T
    assert np.allclose(rows @ rows.T, ref, atol=2e-5 * np.abs(ref).max())
    assert np.allclose(spectrum, s[:d], rtol=1e-5)
    assert attrs["operator"] == "circulant" and "Fourier" in attrs["operator_note"]


def test_circulant_svd_reconstructs_and_pairs():
    rng = np.random.default_rng(0)
    for n in (9, 10, 64):
        r = rng.standard_normal(n)
        u, s, v, modes = circulant_svd(r, n)
        assert np.allclose(u * s @ v.T, circulant_matrix(r))
        assert np.allclose(u.T @ u, np.eye(n), atol=1e-10)
        for c, (p, kind) in enumerate(modes):
            if kind == "cos":
                assert modes[c + 1] == (p, "sin") and s[c] == s[c + 1]


def test_randomized_svd_matches_scipy_svds_on_real_counts(session_ws, sample_counts):
    n, d = 4096, 64
    emb = embed_counts(sample_counts, session_ws, scheduler="sync",
                       params=K0Params(dim=d, v_eff=n, lags=10, kernel="none", solver="rsvd"))
    E, spectrum, active, attrs = load_embeddings(emb)
    x = sp.csr_matrix(reference_x(sample_counts, n, 10))
    u_ref, s_ref, _ = spla.svds(x, k=d)
    order = np.argsort(s_ref)[::-1]
    s_ref, u_ref = s_ref[order], u_ref[:, order]
    rel = np.abs(spectrum - s_ref) / s_ref
    assert rel.max() < 0.01, f"max relative singular value error {rel.max():.4f}"
    # subspace agreement of the leading 16 directions (reported, and must be close)
    u = E[active][:, :16] / np.sqrt(spectrum[:16])
    cosines = np.linalg.svd(u.T @ u_ref[:, :16], compute_uv=False)
    assert cosines.min() > 0.99
    assert attrs["operator"] == "none" and attrs["solver"] == "rsvd"


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["none", "ppmi"])
def test_both_solvers_agree_with_dense_numpy_svd(session_ws, sample_counts, kernel):
    n, d, lags = 1024, 24, 3
    got = {}
    for solver in ("svds", "rsvd"):
        emb = embed_counts(sample_counts, session_ws, scheduler="sync",
                           params=K0Params(dim=d, v_eff=n, lags=lags, kernel=kernel, solver=solver))
        E, spectrum, active, attrs = load_embeddings(emb)
        assert attrs["solver"] == emb.manifest["solver"] == solver and "requested" in attrs["solver_reason"]
        got[solver] = (E[active].astype(np.float64), spectrum.astype(np.float64), emb.fingerprint)
    if kernel == "none":
        x = reference_x(sample_counts, n, lags)
    else:  # PPMI of the restricted lag sum, computed densely: max(0, log P(a,b) / (P(a) P(b)))
        store = CountStore.from_artifact(sample_counts)
        active = store.rank[:n].astype(np.int64)
        D = sum(store.matrix(k).astype(np.float64) for k in range(1, lags + 1))[active][:, active].toarray()
        with np.errstate(divide="ignore", invalid="ignore"):
            pmi = np.log(D * D.sum()) - np.log(D.sum(1, keepdims=True)) - np.log(D.sum(0, keepdims=True))
        x = np.where(D > 0, np.maximum(pmi, 0), 0)
    u, s, _ = np.linalg.svd(x)
    gap = next(k for k in range(8, d) if s[k - 1] > s[k] * 1.01)  # a well-separated leading subspace
    for solver, tol in (("svds", 1e-5), ("rsvd", 1e-2)):
        rows, spectrum, _ = got[solver]
        assert np.abs(spectrum - s[:d]).max() / s[0] < tol, solver
        basis = rows[:, :gap] / np.sqrt(spectrum[:gap])
        assert np.linalg.svd(basis.T @ u[:, :gap], compute_uv=False).min() > 0.99, solver
    assert got["svds"][2] != got["rsvd"][2]  # the solver is part of the fingerprint


def test_solver_choice_and_budget(session_ws, sample_counts):
    from ctstore.embed.sparse import choose_solver, svds_bytes

    params = K0Params(dim=16, v_eff=512, lags=2, kernel="none")
    emb = embed_counts(sample_counts, session_ws, scheduler="sync", params=params, memory="2GB")
    assert emb.manifest["solver"] == "rsvd" and "svds would fit here" in emb.manifest["solver_reason"]
    assert emb.manifest["params"]["solver"] == "rsvd"
    # svds on a large operator in a small budget is refused at plan time; auto takes the range finder
    nnz = 200_000_000
    assert svds_bytes(nnz, 131072, 256) > 4 * 10**9
    with pytest.raises(CtstoreError, match="--solver svds: the operator .* needs .* more than --memory"):
        choose_solver(K0Params(dim=256, kernel="none", solver="svds"), nnz, 131072, "4GB", "local")
    solver, reason = choose_solver(K0Params(dim=256, kernel="none"), nnz, 131072, "4GB", "local")
    assert solver == "rsvd" and "svds would need" in reason
    assert choose_solver(K0Params(dim=16, kernel="none", solver="svds"), 10**4, 512, "4GB", "sync")[0] == "svds"
    assert choose_solver(K0Params(dim=511, v_eff=512, kernel="none"), 10**4, 512, "4GB", "sync")[0] == "rsvd"
    # circulant fingerprints do not carry the option; a solver for them is refused
    with pytest.raises(CtstoreError, match="--solver applies to --kernel none or ppmi"):
        K0Params(solver="svds")
    with pytest.raises(CtstoreError, match="--solver must be one of"):
        K0Params(kernel="none", solver="lanczos")


def test_ppmi_operator_runs_and_is_nonnegative_spectrum(session_ws, sample_counts):
    emb = embed_counts(sample_counts, session_ws, scheduler="sync",
                       params=K0Params(dim=16, v_eff=2048, kernel="ppmi", ppmi_alpha=0.75, power_iters=3))
    E, spectrum, active, attrs = load_embeddings(emb)
    assert attrs["transform"] == "ppmi" and np.all(np.diff(spectrum) <= 1e-3) and spectrum[0] > 0
    assert np.isfinite(E).all()


def test_hierarchical_runs_and_is_compared_with_dense(session_ws, sample_counts):
    """The two-level embedding equals one built from the dense co-occurrence matrix in numpy (group sums,
    within-group blocks, their diagonal sums), and its agreement with dense K0 is the agreement of the
    references, recomputed here with scipy (cosines by pdist, Pearson by pearsonr)."""
    from scipy.spatial.distance import pdist
    from scipy.stats import pearsonr

    from ctstore.analysis.compare import embedding_agreement
    from ctstore.embed.circulant import circulant_embedding

    n, d = 2048, 32
    hier = embed_counts(sample_counts, session_ws, scheduler="sync",
                        params=K0Params(dim=d, v_eff=n, hierarchical=True))
    dense = embed_counts(sample_counts, session_ws, scheduler="sync", params=K0Params(dim=d, v_eff=n))
    Eh, _, active, attrs = load_embeddings(hier)
    Ed, _, _, _ = load_embeddings(dense)
    agreement = embedding_agreement(Eh[active], Ed[active], sample=512, seed=0)
    assert hier.manifest["groups"] == int(np.ceil(np.sqrt(n)))

    def diagonals(x):  # g[m] = Σ_i x[i, (i + m) mod k], by fancy indexing
        k = x.shape[0]
        i = np.arange(k)[:, None]
        return x[i, (i + np.arange(k)[None, :]) % k].sum(axis=0)

    D = np.expm1(reference_x(sample_counts, n, 10))  # raw lag sums on the active set, rank order
    size = int(np.ceil(n / int(np.ceil(np.sqrt(n)))))
    group = np.arange(n) // size
    n_groups = group[-1] + 1
    indicator = np.zeros((n, n_groups))
    indicator[np.arange(n), group] = 1
    e_group = circulant_embedding(diagonals(np.log1p(indicator.T @ D @ indicator)), d - d // 2)[0]
    ref = np.zeros((n, d))
    ref[:, : e_group.shape[1]] = e_group[group]
    for g in range(n_groups):
        lo, hi = g * size, min(n, (g + 1) * size)
        sums = diagonals(np.log1p(D[lo:hi, lo:hi]))
        if sums.any():
            e_within = circulant_embedding(sums, min(d // 2, hi - lo))[0]
            ref[lo:hi, d - d // 2: d - d // 2 + e_within.shape[1]] = e_within
    assert np.allclose(Eh[active], ref, atol=1e-5 * np.abs(ref).max())
    ref_dense = circulant_embedding(diagonals(np.log1p(D)), d)[0]
    idx = np.random.default_rng(0).choice(n, size=512, replace=False)  # the sample embedding_agreement draws
    expected = pearsonr(1 - pdist(ref[idx], "cosine"), 1 - pdist(ref_dense[idx].astype(np.float64), "cosine"))[0]
    assert agreement == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("params,message", [
    (dict(v_eff=10**7), "exceeds the vocabulary"),
    (dict(dim=600, v_eff=512), "exceeds V_eff"),
    (dict(kernel="gaussian"), "--kernel must be one of"),
    (dict(lags=40), "the count store holds lags 1..10"),
])
def test_bad_parameters_fail_at_plan_time(session_ws, sample_counts, params, message):
    before = len(session_ws.list("embeddings"))
    with pytest.raises(CtstoreError, match=message):
        embed_counts(sample_counts, session_ws, scheduler="sync", params=K0Params(**params))
    assert len(session_ws.list("embeddings")) == before


def test_kernel_of_wrong_shape(session_ws, sample_counts, tmp_path):
    k = tmp_path / "k.npy"
    np.save(k, np.ones(7))
    with pytest.raises(CtstoreError, match=r"k.npy: kernel has shape \(7,\)"):
        embed_counts(sample_counts, session_ws, scheduler="sync",
                     params=K0Params(kernel=str(k), method="fft2", v_eff=256, dim=8))


def test_fft2_refuses_when_disk_is_short():
    from ctstore.embed.fft2 import plan_fft2

    with pytest.raises(CtstoreError, match=r"needs .* of disk .* only .* free"):
        plan_fft2(16384, 2**30, free_disk=10**9)


def test_fft2_pipeline_matches_exact_on_small_n(session_ws, sample_counts):
    n, d = 512, 9
    a = embed_counts(sample_counts, session_ws, scheduler="sync", params=K0Params(dim=d, v_eff=n, method="fft2"))
    b = embed_counts(sample_counts, session_ws, scheduler="sync", params=K0Params(dim=d, v_eff=n))
    sa, sb = load_embeddings(a)[1], load_embeddings(b)[1]
    assert np.allclose(sa, sb, rtol=1e-3)


@pytest.mark.slow
def test_out_of_core_fft2_equals_numpy_at_8192(sample_counts, tmp_path):
    from ctstore.cluster import Runner
    from ctstore.embed.fft2 import fft2_convolve, plan_fft2
    from ctstore.formats.csr import save_csr

    n = 8192
    x = reference_x(sample_counts, n, 2)
    rng = np.random.default_rng(0)
    k = rng.standard_normal(n)
    np.save(tmp_path / "k.npy", k)
    save_csr(str(tmp_path / "x"), sp.csr_matrix(x.astype(np.float32)))
    with Runner("3GB", "sync") as runner:
        plan = plan_fft2(n, 2**28, 10**12)
        w_url = fft2_convolve(runner, ("csr", str(tmp_path / "x")), ("circulant", str(tmp_path / "k.npy")), n,
                              str(tmp_path), plan)
    got = zarr.open_array(w_url, mode="r")[:]
    ref = np.fft.irfft2(np.fft.rfft2(x.astype(np.float32).astype(np.float64)) * np.fft.rfft2(circulant_matrix(k)),
                        s=(n, n))
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("n", [256, 300])  # 300: not a multiple of the phase table's 128-column blocks
def test_fft2_circulant_and_dense_kernels_equal_numpy(tmp_path, n):
    """The circulant kernel's row spectra come from the shift theorem, a dense kernel's from its stored
    row pass: both must give numpy's float64 formula (single-precision transforms, bands of odd sizes)."""
    from ctstore.cluster import Runner
    from ctstore.embed.fft2 import Fft2Plan, fft2_convolve
    from ctstore.formats.csr import save_csr

    rng = np.random.default_rng(3)
    x = sp.random(n, n, density=0.05, random_state=3, format="csr", dtype=np.float32)
    save_csr(str(tmp_path / "x"), x)
    k = rng.standard_normal(n)
    np.save(tmp_path / "k.npy", k)
    dense = rng.standard_normal((n, n)).astype(np.float32)
    np.save(tmp_path / "K.npy", dense)
    plan = Fft2Plan(n, row_chunk=37, col_chunk=29, disk_bytes=0)
    xd = x.toarray().astype(np.float64)
    for source, kernel in ((("circulant", str(tmp_path / "k.npy")), circulant_matrix(k)),
                           (("dense", str(tmp_path / "K.npy")), dense.astype(np.float64))):
        scratch = tmp_path / source[0]
        scratch.mkdir()
        with Runner("2GB", "sync") as runner:
            w_url = fft2_convolve(runner, ("csr", str(tmp_path / "x")), source, n, str(scratch), plan)
        got = zarr.open_array(w_url, mode="r")[:]
        ref = np.real(np.fft.ifft2(np.fft.fft2(xd) * np.fft.fft2(kernel)))
        assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max(), source[0]


def test_randomized_svd_that_cannot_fit_the_budget_fails_at_plan_time():
    from ctstore.embed import plan_memory

    with pytest.raises(CtstoreError, match=r"k0 randomized SVD \(V_eff=131072, l=384\): needs .* per task"):
        plan_memory(K0Params(dim=256, kernel="none", oversample=128), 131072, 131072, "2GB", "local")
    assert plan_memory(K0Params(dim=256, kernel="none", oversample=128), 131072, 131072, "4GB",
                       "local").cluster.n_workers >= 1


@pytest.mark.parametrize("unigram,params,memory,expected_v_eff", [
    ([5, 3, 0, 1], dict(dim=2), 10**9, 3),  # auto, sparse: every observed token
    ([5, 3, 0, 1], dict(dim=2, v_eff=2), 10**9, 2),
    ([1] * 100_000, dict(dim=8, method="fft2"), 8 * 1000 ** 2, 1000),  # dense: floor(sqrt(bytes / 8))
])
def test_v_eff_planner_table(unigram, params, memory, expected_v_eff):
    from ctstore.embed import plan_k0

    plan = plan_k0(np.array(unigram, dtype=np.uint64), 10, K0Params(**params), memory)
    assert plan.v_eff == expected_v_eff
    top = np.sort(np.array(unigram))[::-1][:expected_v_eff].sum() / np.sum(unigram)
    assert plan.coverage == pytest.approx(top)


# ---------------------------------------------------------------------------------------
# memory model (issue 11): every method's plan, checked against --memory before any work

MiB = 2**20
RESERVE = 400 * MiB  # the client's fixed share (ctstore.cluster.CLIENT_RESERVE), written out independently


@pytest.mark.parametrize("params,n,task,client", [
    # exact circulant: g per task; client: folded + arriving g, u and v float64, rows float32, 3 temporaries
    (dict(dim=16), 1000, 1000 * 8, 2 * 1000 * 8 + 1000 * 16 * 20 + 3 * 1000 * 8),
    # randomized SVD, l = d + oversample = 30: two panels per task, five in the client (float32 n × l)
    (dict(dim=10, kernel="none", oversample=20), 1000, 2 * 1000 * 30 * 4, 5 * 1000 * 30 * 4),
    # hierarchical, n = 100: 10 groups of 10; per task 10·10 + 10·10 float64 sums
    (dict(dim=8, hierarchical=True), 100, 200 * 8, 2 * 200 * 8 + 100 * 8 + 100 * 8 * 4 + 2 * 10 * 8 * 8),
    # fft2: the SVD's panels (l = 64 + 8 = 72, capped at n = 64) plus one 40-byte-per-entry row band per task;
    # the client the five panels and the folded diagonal sums, never X
    (dict(dim=8, method="fft2"), 64, 2 * 64 * 64 * 4 + 40 * 64, 5 * 64 * 64 * 4 + 2 * 64 * 8),
])
def test_memory_plan_figures_table(params, n, task, client):
    from ctstore.embed import plan_memory

    V = 5000
    memory = 600 * 10**6
    plan = plan_memory(K0Params(**params), n, V, memory, "sync", max_row_entries=10)
    shared = 9 * V  # the int64 rank map and the bool active mask every task receives
    assert plan.task_bytes == task + shared and plan.client_bytes == client
    # in-process: a task has what the reserve and the client leave; blocks take the rest at 64 bytes/entry
    room = memory - RESERVE - client - (task + shared)
    assert plan.cluster.task_memory == memory - RESERVE - client
    assert plan.block_entries == min(4 << 20, room // 64)


def test_memory_plan_refuses_naming_method_and_shortfall():
    from ctstore.embed import plan_memory

    from ctstore.units import format_bytes

    params = K0Params(dim=10, kernel="none", oversample=20)
    n, V = 400_000, 5000  # panels of 48 MB: a task's fixed share is over the cluster's 64 MiB minimum
    task, client = 2 * n * 30 * 4 + 9 * V, 5 * n * 30 * 4
    smallest_block = (1 << 16) * 64
    memory = RESERVE + client + task + smallest_block - 1000  # one block of 64K entries does not fit by 1000 B
    with pytest.raises(CtstoreError) as err:
        plan_memory(params, n, V, memory, "sync")
    message = str(err.value)
    assert message.startswith("k0 randomized SVD (V_eff=400000, l=30): needs") and "\n" not in message
    assert f"needs {format_bytes(task + smallest_block)} per task and {format_bytes(client)} in the client" in message
    assert f"{format_bytes(1000)} short" in message
    assert plan_memory(params, n, V, memory + 1000, "sync").block_entries == 1 << 16
    # a row longer than the smallest block needs its own room
    with pytest.raises(CtstoreError, match="short"):
        plan_memory(params, n, V, memory + 1000, "sync", max_row_entries=(1 << 16) + 1)
    with pytest.raises(CtstoreError, match=r"k0 circulant exact: needs .* too small"):
        plan_memory(K0Params(dim=4), 1000, V, "1KB", "local")


@pytest.mark.parametrize("kernel", ["circulant", "none"])
def test_blocks_sized_from_a_small_budget_give_the_same_embeddings(session_ws, sample_counts, kernel):
    from ctstore.embed import plan_memory
    from ctstore.embed.blocks import row_entries

    params = K0Params(dim=16, v_eff=1024, lags=10, kernel=kernel, power_iters=2)
    store = CountStore.from_artifact(sample_counts)
    V = store.n_vocab
    roomy = plan_memory(params, 1024, V, "4GB", "sync")
    # the smallest in-process budget: a task gets the cluster's 64 MiB minimum, blocks what is left of it
    memory = RESERVE + roomy.client_bytes + 64 * MiB
    entries = (64 * MiB - roomy.task_bytes) // 64
    assert plan_memory(params, 1024, V, memory, "sync").block_entries == entries < roomy.block_entries
    assert int(row_entries(store, list(range(1, 11))).sum()) > 2 * entries  # so at least three blocks
    ref = embed_counts(sample_counts, session_ws, scheduler="sync", params=params)
    E_ref, s_ref, active, _ = load_embeddings(ref)
    small = embed_counts(sample_counts, session_ws, scheduler="sync", params=params, memory=memory, force=True)
    E, s, _, _ = load_embeddings(small)
    assert small.fingerprint == ref.fingerprint
    assert np.allclose(s, s_ref, rtol=1e-6)
    assert np.allclose(E[active], E_ref[active], rtol=1e-6, atol=1e-6 * np.abs(E_ref[active]).max())


def test_fft2_band_shuffle_reassembles_x_without_the_client(sample_counts, tmp_path):
    """Operator blocks spilled by rank-row band in tasks, and bands read back, equal X (rows of any band)."""
    from ctstore.cluster import Runner, round_robin
    from ctstore.embed.blocks import build_operator, row_entries
    from ctstore.embed.fft2 import _dense_rows, band_pieces, band_spill_task

    n, lags = 700, 2
    store = CountStore.from_artifact(sample_counts)
    active = store.rank[:n].astype(np.int64)
    inv_rank = np.full(store.n_vocab, -1, np.int64)
    inv_rank[active] = np.arange(n)
    nnz = int(row_entries(store, [1, 2]).sum())
    with Runner("2GB", "sync") as runner:
        spec = build_operator(store, runner, str(tmp_path / "op"), lags=[1, 2], weights=[1.0, 1.0], symmetric=False,
                              active=active, transform="log1p", ppmi_alpha=1.0, block_entries=nnz // 3)
        assert len(spec.blocks) >= 3
        spilled = runner.map(band_spill_task, [(spec, g, inv_rank, 97, str(tmp_path))
                                               for g in round_robin(spec.blocks, 2)], desc="spill")
    x = reference_x(sample_counts, n, lags).astype(np.float32)
    source = ("bands", (str(tmp_path), band_pieces(spilled)))
    for i0 in range(0, n, 97):
        i1 = min(n, i0 + 97)
        assert np.allclose(_dense_rows(source, i0, i1, n), x[i0:i1], rtol=1e-6, atol=0)


@pytest.mark.parametrize("url", ["local", "memory://fft2-chunks"])
@pytest.mark.parametrize("dtype", [np.complex64, np.float32])
def test_fft2_write_chunks_equals_zarrs_own_write(tmp_path, url, dtype):
    """fft2's tasks write whole chunk files themselves (``write_chunks``): what Zarr reads back, and the chunk
    files, equal those of ``arr[i0:, c0:] = block`` through Zarr, edge chunks (37 × 29 on 100 × 70) included."""
    from ctstore.embed.fft2 import write_chunks
    from ctstore.location import Location

    rng = np.random.default_rng(5)
    shape, chunks = (100, 70), (37, 29)
    full = rng.standard_normal(shape).astype(dtype)
    if dtype == np.complex64:
        full = full + 1j * rng.standard_normal(shape).astype(np.float32)
    base = Location.of(str(tmp_path) if url == "local" else url)
    arrays = {}
    for name in ("ours", "zarr"):
        loc = base.child(f"{name}.zarr")
        zarr.create_array(loc.url, shape=shape, dtype=dtype, chunks=chunks, compressors=None, overwrite=True,
                          storage_options=loc.zarr_options)
        arrays[name] = loc
    for i0 in range(0, shape[0], chunks[0]):  # row bands, as row_fft_task writes them
        write_chunks(arrays["ours"], full[i0:i0 + chunks[0]], i0, 0, chunks)
        arrays["zarr"].open_array("r+")[i0:i0 + chunks[0]] = full[i0:i0 + chunks[0]]
    assert np.array_equal(arrays["ours"].open_array("r")[:], full)
    for c0 in range(0, shape[1], chunks[1]):  # column bands over them, as column_task writes them
        band = full[:, c0:c0 + chunks[1]] * 2
        write_chunks(arrays["ours"], band, 0, c0, chunks)
        arrays["zarr"].open_array("r+")[:, c0:c0 + chunks[1]] = band
    assert np.array_equal(arrays["ours"].open_array("r")[:], full * 2)
    for a in range(3):
        for b in range(3):
            key = ("c", str(a), str(b))
            assert arrays["ours"].child(*key).read_bytes() == arrays["zarr"].child(*key).read_bytes()
