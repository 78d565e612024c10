"""Stage ``seed``: embeddings → ``model`` artifact (docs/design.md §5, Paper 113 §5).

Spectral seeding from the *centred* embedding rows, ``(E − Ē)ᵀ(E − Ē) = U Λ Uᵀ``
(d × d, eigenvalues descending; the mean row Ē, shared by every token, holds ~89%
of the raw ``EᵀE`` trace for K0 embeddings and made every seeded matrix nearly
rank 1; ``dc_share`` in the report). Layer l of L keeps the eigen-directions and
rolls the eigenvalue weights by ``s_l = l·d/L`` (``seeding.weighted``; rolling
the eigenvectors together with the eigenvalues, as before, only permuted rows,
which ``c_proj`` undid: every layer computed the same function):

* attention: Q, K, V at shifts ``s_l``, ``s_l + d/3L``, ``s_l + 2d/3L``, K and V
  mixed by seeded orthogonal matrices; ``c_proj`` = a seeded rotation of Vᵀ (see
  :func:`ctstore.seeding.spectral_layer_matrices` for why the randomness is needed);
* MLP ``c_fc``: four blocks of d hidden units. Block 0 is Q's matrix; block j = 1..3
  is ``Q_jᵀ W`` at shift ``s_l + j·d/4``, with ``Q_j`` a seeded random orthogonal
  d × d matrix (no twin units); MLP ``c_proj`` = ``c_fcᵀ`` (adjoint);
* LayerNorms identity, biases zero, head tied to the token embedding (or, with
  ``tie_head=False``, a separate randomly initialised head);
* token embedding rows from E (compact ids when a compact vocabulary is used);
* ``unigram_prior``: the final LayerNorm bias b is fitted by least squares so that
  ``b Wᵀ`` (W the output matrix) approximates the centred log unigram
  probabilities: the output side starts from unigram statistics.

Recipes. ``literal`` applies the above to E as k0 wrote it. For the k0/SVD
embeddings ``E = U_d √S_d`` the columns of E are orthogonal, so ``EᵀE`` is
diagonal, U is the identity up to order and sign, and every ``M_l`` is a
*scaled permutation matrix*: the literal recipe is degenerate for SVD-basis
embeddings (the "rotation" only relabels coordinates, and layer cosines near 0
hold by construction). ``rotated`` (default) first expresses E in a seeded
random orthonormal basis, ``E ← E Q``, for the token embedding and the layers
alike, so U is a dense rotation and so are the ``M_l``. It is the same model up
to a change of basis of the residual stream (LayerNorm centring and Adam's
coordinate-wise steps are what differ); the layer cosines are basis-invariant.

Scale. ``embed_scale="matched"`` (default) rescales every seeded matrix to the
Frobenius norm of the random initialisation it replaces (the same
``torch.manual_seed(seed)`` builds that random model), so a comparison with
``init="random"`` measures structure, not scale. ``"unscaled"`` keeps the token
embedding as k0 produced it (Paper 113 §8 freezes this E; norm-matching to a
tied head of rows ~0.1 makes the logits nearly flat) and still norm-matches the
layers. ``init="embeddings"`` seeds only the token embedding (ablation f).
``init="bigram"`` (untied head) makes the step-0 logits a rank-(d−2) factorisation of the
Witten–Bell bigram's log-conditionals and zeroes every residual projection
(:func:`_set_bigram`); ``init="bigram_prev"`` adds a previous-token head in layer 0 that carries the
lag-2 statistics (:mod:`ctstore.seed_prev`). The report gives each seeded matrix's participation ratio and the
cosines between the layers' attention outputs for one input (functional diversity).

Vocabulary. ``vocab=N``: the N most frequent tokens of the counts plus one
``<unk>`` row; ``vocab="corpus"``: every token that occurs in the counted
documents (so ``<unk>`` is only for tokens never seen there); ``None``: the full
tokenizer vocabulary. The embeddings' ``active`` ids are the counts' V_eff most
frequent ids, so N ≤ V_eff is read from them; a larger N, ``"corpus"`` and
``unigram_prior`` read the unigram and rank of the count store the embeddings
were computed from (:class:`~ctstore.formats.counts.CountStore`).

The matrix arithmetic lives in :mod:`ctstore.seeding`, shared with ``crystallize``.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from .errors import CtstoreError
from .log import log
from .analysis.spectral import spectral_gap_ratio
from .formats.model import save_model
from .model import PhotonicGPT, _rope_cache, get_config
from .seeding import (basis_rotation, bigram_factors, centred_eigen_basis, eigen_basis, layernorm_preimage,
                      max_row_energy_share, participation_ratio, rescaled, spectral_layer_matrices)
from .stage import Input, Params, Stage, param
from .units import NON_NEGATIVE, POSITIVE
from .workspace import Workspace, build_artifact

__all__ = ["SeedParams", "seed_model", "build_seeded_model", "corpus_vocab"]

FORMAT_VERSION = 2
CODE_VERSION = 3  # fingerprint version; 3: spectral layers functionally distinct (DC removed, per-layer Q/K/V)
BIGRAM_EMBED_RMS = 1.0  # token-embedding RMS of init "bigram" (see _set_bigram)
INITS = ("spectral", "random", "embeddings", "bigram", "bigram_prev")
BIGRAM_INITS = ("bigram", "bigram_prev")
LAG2_RANK_FRACTION = 8  # bigram_prev: lag-2 rank k2 = d // 8 (16 at d = 128), taken from the bigram's rank
LAG2_WEIGHT = 0.5  # bigram_prev: β, the discount on the naive-Bayes lag-2 term (chosen on training windows)
LAG2_RMS = 0.25  # bigram_prev: RMS of the lag-2 part of the residual stream (the bigram part has RMS 1)
PREV_TOKEN_MASS = 0.95  # bigram_prev: attention mass of layer 0's head 0 on position i - 1 at every position
BIGRAM_FIT_STEPS = 100  # Adam steps of the factor fit (seeding.bigram_factors); ~0.3 s each at V = 4097 on CPU
RECIPES = ("rotated", "literal")
EMBED_SCALES = ("matched", "unscaled")


def _vocab_arg(text: str):
    """``--vocab``: 'corpus' or a positive integer (checked at parse time, one-line error)."""
    import argparse

    if text == "corpus":
        return text
    if isinstance(text, bool) or not isinstance(text, (str, int, np.integer)):
        value = 0
    else:
        try:
            value = int(text)
        except ValueError:
            value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'corpus', not {text!r}")
    return value


@dataclass(frozen=True)
class SeedParams(Params):
    config: str = param("tiny", "tiny, small, medium, ct-10m, ct-124m or a config JSON file")
    init: str = param("spectral", "spectral (the CT recipe), random, embeddings (E only), bigram (step-0 logits "
                      "= a rank-(d-2) factorisation of the Witten-Bell bigram; needs --untied-head), or bigram_prev "
                      "(bigram plus a previous-token head carrying the lag-2 statistics)", choices=INITS)
    # compact vocabulary size V_model, "corpus", or None (full tokenizer vocab)
    vocab: int | str | None = param(None, "compact vocabulary: top-N corpus tokens + <unk>, or 'corpus' (every "
                                    "token that occurs)", parse=_vocab_arg)
    seed: int = param(0, "random seed", parse=NON_NEGATIVE)
    width: int | None = param(None, "override n_embd, keeping the head size (width sweeps)", parse=POSITIVE,
                              cli=False)
    recipe: str = param("rotated", "rotated: E in a seeded random orthonormal basis first; literal: the paper's "
                        "recipe, degenerate (scaled permutations) for SVD-basis embeddings", choices=RECIPES)
    embed_scale: str = param("matched", "matched: token embedding norm-matched to a random init; unscaled: E as k0 "
                             "wrote it", choices=EMBED_SCALES)
    tie_head: bool = param(True, "a separate output head instead of the tied one", flag="--untied-head", negate=True)
    unigram_prior: bool = param(False, "fit the final LayerNorm bias so the initial logits approximate log unigram "
                                "probabilities")

    def __post_init__(self):
        super().__post_init__()  # each field's own check (choices, vocab)
        if self.init in BIGRAM_INITS and self.tie_head:
            raise CtstoreError(f"--init {self.init} needs an untied head (--untied-head): the head carries the right factor")


def corpus_vocab(unigram: np.ndarray) -> int:
    """``vocab="corpus"``: the number of token ids that occur at least once."""
    return max(1, int(np.count_nonzero(unigram)))


def build_seeded_model(E_full: np.ndarray, rank: np.ndarray | None, params: SeedParams, n_vocab: int,
                       unigram: np.ndarray | None = None, lag1=None, lag2=None):
    """Return ``(model, vocab_map, report)``; ``E_full`` is (V, d) indexed by tokenizer id.

    ``unigram`` (counts by tokenizer id) is needed for ``unigram_prior`` and the bigram inits,
    ``lag1`` (the counts' lag-1 CSR matrix, training documents only) for ``init="bigram"``,
    and ``lag2`` as well for ``init="bigram_prev"``.
    """
    model, vocab_map, report, kept = _build(E_full, rank, params, n_vocab)
    if params.init in BIGRAM_INITS:
        if unigram is None or lag1 is None or (params.init == "bigram_prev" and lag2 is None):
            raise CtstoreError(f"init {params.init} needs the unigram and lag-1"
                               + (" and lag-2" if params.init == "bigram_prev" else "") + " counts")
        if params.init == "bigram":
            report.update(_set_bigram(model, unigram, lag1, vocab_map, params.seed))
        else:
            from .seed_prev import set_bigram_prev
            report.update(set_bigram_prev(model, unigram, lag1, lag2, vocab_map, params.seed))
    if params.unigram_prior:
        if unigram is None:
            raise CtstoreError("unigram_prior needs the unigram counts")
        report["unigram_prior_r2"] = _set_unigram_prior(model, unigram, kept, vocab_map is not None)
    return model, vocab_map, report


def _set_unigram_prior(model, unigram: np.ndarray, kept: np.ndarray, compact: bool) -> float:
    """Output side from unigram statistics: the final LayerNorm bias b with ``W b ≈ log p − mean``.

    Logits are ``(LN(x)·γ + b) Wᵀ`` for the output matrix W, so this b adds the least-squares best
    log-unigram prior a d-dimensional bias can give. Returns the R² of that fit.
    """
    if model.transformer.ln_f.bias is None:
        raise CtstoreError("unigram_prior needs a config with biases (the final LayerNorm bias carries the prior)")
    u = np.asarray(unigram, np.float64)
    p = u[kept] + 1.0
    if compact:
        p = np.append(p, u.sum() - u[kept].sum() + 1.0)
    target = np.log(p / p.sum())
    target -= target.mean()
    W = model.output_head.weight.detach().double().numpy()
    b, *_ = np.linalg.lstsq(W, target, rcond=None)
    with torch.no_grad():
        model.transformer.ln_f.bias.copy_(torch.from_numpy(b))
    resid = W @ b - target
    return float(1 - resid @ resid / (target @ target)) if target.any() else 1.0


@torch.no_grad()
def start_as_bigram(model, embedding: np.ndarray, head: np.ndarray) -> None:
    """Load the token embedding and the untied head, reset the final LayerNorm, and zero every residual
    projection (attention and MLP ``c_proj``), so that each block starts as the identity."""
    model.transformer.wte.weight.copy_(torch.as_tensor(embedding, dtype=torch.float32))
    model.output_head.weight.copy_(torch.as_tensor(head, dtype=torch.float32))
    model.transformer.ln_f.weight.fill_(1.0)
    if model.transformer.ln_f.bias is not None:
        model.transformer.ln_f.bias.zero_()
    for block in model.transformer.h:
        for proj in (block.attn.c_proj, block.mlp.c_proj):
            proj.weight.zero_()
            if proj.bias is not None:
                proj.bias.zero_()


def _set_bigram(model, unigram: np.ndarray, lag1, vocab_map, seed: int) -> dict:
    """``init="bigram"``: token embedding and untied head from a rank-(d−2) factorisation of the
    Witten–Bell log-conditionals (:mod:`ctstore.analysis.baselines`), every residual projection
    (attention and MLP ``c_proj``) zeroed so each block starts as the identity; the step-0 logits
    are then exactly ``A_v · B_w`` (:func:`~ctstore.seeding.layernorm_preimage`).

    The embedding rows get RMS ``BIGRAM_EMBED_RMS`` = 1. At the random init's 0.02, the first Adam
    steps on the zeroed projections (every entry moves by ~lr) made the blocks' outputs larger than
    the residual stream within 10 steps: on `small` the validation perplexity went 74 → 773 at step
    10 before recovering (seed 0, cpu profile). At RMS 1 the same updates are a few percent of it.
    """
    from .analysis.baselines import compact_counts, log_conditionals, witten_bell

    c = compact_counts(unigram, lag1, vocab_map)
    if c.V != model.config.vocab_size:
        raise CtstoreError(f"init bigram: counts map to {c.V} ids, the model has {model.config.vocab_size}")
    d = model.config.n_embd
    total, _types, _p = witten_bell(c)
    A, B, info = bigram_factors(log_conditionals(c), total + 1.0, d - 2, BIGRAM_FIT_STEPS, seed)
    X, W = layernorm_preimage(A, B, d, rms=BIGRAM_EMBED_RMS, eps=model.transformer.ln_f.eps)
    start_as_bigram(model, X, W)
    log(f"seed: bigram factors rank {d - 2}: weighted cross-entropy {info['fit_ce']:.4f} nats "
        f"(SVD start {info['svd_ce']:.4f}, Witten-Bell target {info['target_entropy']:.4f})")
    return {"bigram_fit": {k: float(v) for k, v in info.items()}, "bigram_rank": d - 2}


def _build(E_full: np.ndarray, rank: np.ndarray | None, params: SeedParams, n_vocab: int):
    if params.vocab == "corpus":
        raise CtstoreError("build_seeded_model: resolve vocab='corpus' to a number first (seed_model does)")
    compact = params.vocab is not None
    if compact:
        if not 1 <= params.vocab < n_vocab:
            raise CtstoreError(f"--vocab {params.vocab} must be between 1 and the tokenizer's {n_vocab - 1}")
        kept = rank[: params.vocab].astype(np.int64)
        vocab_map = np.full(n_vocab, params.vocab, np.int64)
        vocab_map[kept] = np.arange(params.vocab)
        vocab_size = params.vocab + 1
    else:
        kept, vocab_map, vocab_size = np.arange(n_vocab), None, n_vocab
    config = get_config(params.config, vocab_size=vocab_size, tie_head=params.tie_head)
    if params.width is not None:
        head = config.n_embd // config.n_head
        config = get_config(params.config, vocab_size=vocab_size, n_embd=params.width,
                            n_head=max(1, params.width // head), tie_head=params.tie_head)
    if params.init not in ("random", *BIGRAM_INITS) and E_full.shape[1] != config.n_embd:
        raise CtstoreError(f"config {params.config}: n_embd={config.n_embd} does not fit the embedding "
                           f"dimension d={E_full.shape[1]} (run k0 with --dim {config.n_embd})")
    torch.manual_seed(params.seed)
    model = PhotonicGPT(config)
    report: dict = {"config": config.to_dict(), "init": params.init, "params": model.num_params(),
                    "model_vocab": vocab_size, "tie_head": params.tie_head,
                    "recipe": None if params.init in ("random", *BIGRAM_INITS) else params.recipe,
                    "embed_scale": None if params.init in ("random", *BIGRAM_INITS) else params.embed_scale}
    if params.init in ("random", *BIGRAM_INITS):
        return model, vocab_map, report, kept
    basis = basis_rotation(config.n_embd, params.seed) if params.recipe == "rotated" else None
    with torch.no_grad():
        wte = model.transformer.wte.weight
        rows = np.zeros((vocab_size, config.n_embd), np.float64)
        rows[: len(kept)] = E_full[kept]
        if compact:
            rest = np.setdiff1d(np.arange(n_vocab), kept)
            rows[-1] = E_full[rest].mean(axis=0) if rest.size else 0.0
        if basis is not None:
            rows = rows @ basis
        rows = rows.astype(np.float32)
        wte.copy_(rescaled(rows, wte) if params.embed_scale == "matched" else torch.as_tensor(rows))
        lam, U = eigen_basis(rows[: len(kept)])
        report["spectral_gap_ratio"] = spectral_gap_ratio(lam)
        report["eigenvalues_head"] = [float(x) for x in lam[:8]]
        lam_c, U_c = centred_eigen_basis(rows[: len(kept)])
        report["dc_share"] = float(1 - lam_c.sum() / lam.sum()) if lam.sum() > 0 else 0.0
        if params.init == "spectral":
            lam, U = lam_c, U_c  # the layers from the centred spectrum: the DC row made them ~rank 1
            seeded, pr = [], {}
            for l, block in enumerate(model.transformer.h):
                mats = spectral_layer_matrices(U, lam, l, config.n_layer, params.seed)
                for name, value in mats.items():
                    p = block.get_parameter(name)
                    p.copy_(rescaled(value, p))
                    pr[f"{l}.{name}"] = participation_ratio(value)
                for ln in (block.ln_1, block.ln_2):
                    ln.weight.fill_(1.0)
                    if ln.bias is not None:
                        ln.bias.zero_()
                seeded.append(block.attn.c_attn.weight.flatten().clone())
            report["layer_cosine"] = _pairwise_cosines(seeded)
            report["participation_ratio"] = pr
            report["participation_ratio_mean"] = float(np.mean(list(pr.values())))
            report["layer_output_cosine"] = layer_output_cosines(model, params.seed)
            report["max_row_energy_share"] = max_row_energy_share(
                [b.attn.c_attn.weight[: config.n_embd].numpy() for b in model.transformer.h])
    return model, vocab_map, report, kept


@torch.no_grad()
def layer_output_cosines(model, seed: int = 0, batch: int = 4, T: int = 32) -> dict:
    """Functional layer diversity (Paper 113 §2.3 "layer diversity collapse", §5.1): the cosine between
    the attention outputs of every pair of layers for the *same* input (the token embeddings of a seeded
    random batch, through each layer's ``ln_1`` and ``attn``). Weight cosines can be ≈ 0 for layers that
    compute the same function (a row permutation undone by ``c_proj``); output cosines cannot.
    """
    g = torch.Generator().manual_seed(seed)
    T = min(T, model.config.block_size)
    idx = torch.randint(0, model.config.vocab_size, (batch, T), generator=g)
    x = model.transformer.wte(idx)
    cos, sin = _rope_cache(T, model.config.n_embd // model.config.n_head, model.config.rope_base, idx.device)
    outs = [block.attn(block.ln_1(x), cos, sin).flatten() for block in model.transformer.h]
    return _pairwise_cosines(outs)


def _pairwise_cosines(mats: list[torch.Tensor]) -> dict:
    out = {}
    for i, j in itertools.combinations(range(len(mats)), 2):
        out[f"{i}-{j}"] = float(torch.nn.functional.cosine_similarity(mats[i], mats[j], dim=0))
    vals = list(out.values())
    return {"pairs": out, "mean": float(np.mean(vals)) if vals else None}


def seed_model(embeddings, workspace: Workspace | None = None, *, params: SeedParams | None = None,
               force: bool = False):
    """Build a PhotonicGPT from an embeddings artifact (or random) as a ``model`` artifact."""
    from .formats.counts import CountStore
    from .formats.embeddings import load_embeddings

    ws = workspace or embeddings.workspace
    params = params or SeedParams()
    fp = STAGE.fingerprint(params, {"embeddings": embeddings.fingerprint})

    def build(path: str) -> dict:
        E, _spectrum, active, attrs = load_embeddings(embeddings)
        counts = ws.get(embeddings.manifest["inputs"]["counts"], kind="counts")
        # k0's active ids are the counts' first V_eff ids by frequency: a compact vocabulary within them
        # needs nothing else; a larger one, vocab="corpus" and the unigram prior read the count store
        needs_counts = params.unigram_prior or params.init in BIGRAM_INITS
        fits = isinstance(params.vocab, int) and params.vocab <= len(active) and not needs_counts
        store = CountStore.from_artifact(counts) if (params.vocab or needs_counts) and not fits else None
        rank = active if fits else store.rank if store else None
        resolved = params
        if params.vocab == "corpus":
            resolved = replace(params, vocab=min(corpus_vocab(store.unigram), E.shape[0] - 1))
        model, vocab_map, report = build_seeded_model(E, rank, resolved, E.shape[0],
                                                      store.unigram if needs_counts else None,
                                                      store.matrix(1) if params.init in BIGRAM_INITS else None,
                                                      store.matrix(2) if params.init == "bigram_prev" else None)
        extra = {"tokenizer": embeddings.manifest.get("tokenizer"), "tokenizer_vocab": int(E.shape[0]),
                 "init": params.init, "operator": attrs.get("operator"), "recipe": report["recipe"],
                 "embed_scale": report["embed_scale"], "counts_val_fraction":
                 counts.manifest.get("params", {}).get("val_fraction")}
        save_model(model, ws.artifact_location("model", fp), vocab_map, extra)
        if "spectral_gap_ratio" in report:
            log(f"seed: spectral gap ratio {report['spectral_gap_ratio']:.4f}"
                + (f", mean layer output cosine {report['layer_output_cosine']['mean']:.4f}, mean participation "
                   f"ratio {report['participation_ratio_mean']:.1f}" if "layer_output_cosine" in report else ""))
        log(f"seed: {params.init} {params.config}, {report['params'] / 1e6:.2f}M parameters")
        return {"format_version": FORMAT_VERSION, "params": asdict(params),
                "inputs": {"embeddings": embeddings.fingerprint}, **extra, "report": report}

    return build_artifact(ws, "model", fp, build, force=force)[0]


STAGE = Stage(
    name="seed", kind="model", params=SeedParams, code_version=CODE_VERSION, format_version=FORMAT_VERSION,
    help="embeddings -> PhotonicGPT (spectral seeding or random init)",
    inputs=(Input("embeddings", "embeddings", "embeddings artifact fingerprint (or unique prefix)"),),
    run=lambda ws, inputs, params, opts: seed_model(inputs["embeddings"], ws, params=params, force=opts["force"]),
)
