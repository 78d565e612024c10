"""Stage ``crystallize``: counts → ``model`` without training (Paper 51's algorithm).

For layer l of L the operator is a band of lags ``l+1 … l+3`` with weights β
(default 1, ½, ¼): ``X_l = log1p(Σ β_j lag_{l+j})`` on the model's compact
vocabulary (the top ``V_model`` tokens). Per layer:

1. randomized SVD of ``X_l`` (rank d) through the ``k0 --kernel none`` stage, so
   each band is an embeddings artifact of its own and is reused;
2. the layer operator in embedding coordinates, ``B_l = U_0ᵀ U_l S_l U_lᵀ U_0``
   (d × d: the band's left singular subspace seen from the first band's, which
   also gives the embedding ``E = U_0 √S_0``; right singular vectors are not
   kept in embeddings artifacts, so the symmetric form is used), is fitted row by row with K Gaussians (harmonic L1 fit);
   the model's weights are the fitted reconstructions, whose Gaussian
   parameters (A, μ, σ) are stored in ``harmonic.safetensors``
   (:func:`ctstore.analysis.harmonic.reconstruct` rebuilds B from them):
   ``c_attn = [B; Bᵀ; B]``, attention ``c_proj = Bᵀ``, ``c_fc`` four copies of B
   rolled by d/4, MLP ``c_proj = c_fcᵀ``.

Every matrix is rescaled to the Frobenius norm of the random initialisation it
replaces (:func:`ctstore.seeding.rescaled`, as in :mod:`ctstore.seed`),
LayerNorms are identity, the head is tied. Choices the paper leaves open (which
product maps a band into the residual basis, Q/K/V sharing) are the ones above.

Paper 51 step 2 fits each right singular vector ``v_k`` over the vocabulary with
a 1-D Gaussian mixture and builds ``W[i, j] = Σ_{k,m} σ_k u_k[i] A_{k,m}
N(j; μ_{k,m}, s_{k,m})``, a V-wide matrix. The weights here are d × d and come
from the Gaussian fit of the rows of ``B_l`` (step 2 above), so per-vector
mixture fits would describe the band without reaching any weight; they are not
computed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import CtstoreError
from .log import log
from .stage import Input, Params, Stage, param
from .units import NON_NEGATIVE, POSITIVE
from .workspace import Workspace, build_artifact

__all__ = ["CrystallizeParams", "crystallize_model"]

FORMAT_VERSION = 1
HARMONIC = "harmonic.safetensors"  # per layer (A, μ, σ) of the Gaussian fits


def _betas(text: str) -> tuple:
    """``--betas``: comma-separated finite numbers (checked at parse time)."""
    import argparse
    import math

    try:
        items = text.split(",") if isinstance(text, str) else text
        betas = tuple(float(b) for b in items if not isinstance(b, bool))
        betas = betas if len(betas) == len(items) else ()
    except (ValueError, TypeError):
        betas = ()
    if not betas or not all(math.isfinite(b) for b in betas):
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, not {text!r}")
    return betas


@dataclass(frozen=True)
class CrystallizeParams(Params):
    config: str = param("tiny", "tiny, small, ct-10m, ct-124m or a config JSON file")
    vocab: int = param(4096, "compact vocabulary size V_model", parse=POSITIVE)
    betas: tuple = param((1.0, 0.5, 0.25), "weights of the lags in each layer's band", parse=_betas)
    K: int = param(4, "Gaussians per weight row", parse=POSITIVE)
    power_iters: int = param(3, parse=NON_NEGATIVE, cli=False)
    seed: int = param(0, "random seed", parse=NON_NEGATIVE)


def crystallize_model(counts, workspace: Workspace | None = None, *, params: CrystallizeParams | None = None,
                      memory: str = "4GB", scheduler: str | None = None, force: bool = False):
    from .formats.counts import CountStore
    from .model import get_config

    ws = workspace or counts.workspace
    params = params or CrystallizeParams()
    config = get_config(params.config, vocab_size=params.vocab + 1)
    store = CountStore.from_artifact(counts)
    band = len(params.betas)
    need = config.n_layer + band - 1
    if need > store.lags:
        raise CtstoreError(f"crystallize {params.config}: {config.n_layer} layers with bands of {band} lags need "
                           f"lags 1..{need}; the count store has 1..{store.lags} (count with --lags {need})")
    if params.vocab >= store.n_vocab or params.vocab < config.n_embd:
        raise CtstoreError(f"--vocab {params.vocab} must be between d={config.n_embd} and V={store.n_vocab}")
    fp = STAGE.fingerprint(params, {"counts": counts.fingerprint})

    def build(path: str) -> dict:
        return _crystallize_into(ws, ws.artifact_location("model", fp), counts, store, params, config, memory,
                                 scheduler)

    return build_artifact(ws, "model", fp, build, force=force)[0]


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _band_svd(ws, counts, params, config, layer: int, memory, scheduler):
    """The band's truncated SVD, an embeddings artifact of stage k0 (reached through the registry, as a peer)."""
    from .formats.embeddings import load_embeddings
    from .stages import stage

    k0 = stage("k0")
    band = len(params.betas)
    k0_params = k0.params(dim=config.n_embd, lags=layer + band, lag_from=layer + 1,
                          weighting=",".join(str(b) for b in params.betas), v_eff=params.vocab, kernel="none",
                          power_iters=params.power_iters, seed=params.seed)
    emb = k0.run(ws, {"counts": counts}, k0_params, {"memory": memory, "scheduler": scheduler, "force": False})
    E, spectrum, active, _ = load_embeddings(emb)
    U = E[active].astype(np.float64) / np.sqrt(np.maximum(spectrum, 1e-30))  # rank order, orthonormal columns
    return U, spectrum.astype(np.float64), active, emb.fingerprint


def _crystallize_into(ws, location, counts, store, params, config, memory, scheduler) -> dict:
    """Build the model into the artifact directory ``location`` (a Location: local, memory:// or S3)."""
    import torch
    from safetensors.torch import save

    from .analysis.harmonic import fit_harmonic
    from .formats import write_file
    from .formats.model import save_model
    from .model import PhotonicGPT
    from .seeding import rescaled

    d, L = config.n_embd, config.n_layer
    bands = [_band_svd(ws, counts, params, config, layer, memory, scheduler) for layer in range(L)]
    U0, S0, active, _ = bands[0]
    torch.manual_seed(params.seed)
    model = PhotonicGPT(config)
    harmonic: dict = {}
    report: dict = {"layers": []}
    with torch.no_grad():
        wte = model.transformer.wte.weight
        rows = np.zeros((config.vocab_size, d), np.float32)
        rows[: params.vocab] = U0 * np.sqrt(S0)
        wte.copy_(rescaled(rows, wte))
        for layer, (U, S, _active, fp) in enumerate(bands):
            B = (U0.T @ U) * S @ (U.T @ U0)
            fit = fit_harmonic(B, K=params.K)
            W = fit.reconstruction
            for name, value in (("attn.c_attn.weight", np.concatenate([W, W.T, W])), ("attn.c_proj.weight", W.T),
                                ("mlp.c_fc.weight", np.concatenate([np.roll(W, j * d // 4, axis=1)
                                                                     for j in range(4)])),):
                p = model.transformer.h[layer].get_parameter(name)
                p.copy_(rescaled(value, p))
            fc = model.transformer.h[layer].mlp.c_fc.weight
            model.transformer.h[layer].mlp.c_proj.weight.copy_(
                rescaled(fc.T.numpy(), model.transformer.h[layer].mlp.c_proj.weight))
            for key, arr in (("amplitude", fit.amplitude), ("centre", fit.centre), ("width", fit.width)):
                harmonic[f"h.{layer}.{key}"] = torch.as_tensor(arr, dtype=torch.float32)
            report["layers"].append({"layer": layer, "lags": [layer + 1, layer + len(params.betas)],
                                     "band_embeddings": fp, "top_singular_value": float(S[0]),
                                     "l1_r2": fit.r2, "compression_ratio": fit.compression_ratio})
            log(f"crystallize: layer {layer} lags {layer + 1}..{layer + len(params.betas)}, L1 fit R² {fit.r2:.4f}")
    vocab_map = np.full(store.n_vocab, params.vocab, np.int64)
    vocab_map[active] = np.arange(params.vocab)
    save_model(model, location, vocab_map, {"tokenizer": counts.manifest.get("tokenizer"), "init": "crystallize",
                                        "tokenizer_vocab": int(store.n_vocab)})
    write_file(location.child(HARMONIC), save(harmonic))
    return {"format_version": FORMAT_VERSION, "params": {"crystallize": _jsonable(asdict(params))},
            "inputs": {"counts": counts.fingerprint}, "tokenizer": counts.manifest.get("tokenizer"),
            "init": "crystallize", "report": report}


STAGE = Stage(
    name="crystallize", kind="model", params=CrystallizeParams, code_version=1, format_version=FORMAT_VERSION,
    help="counts -> model without training (Paper 51: lag bands, SVD, harmonic layers)",
    inputs=(Input("counts", "counts", "counts artifact fingerprint (or unique prefix)"),),
    run=lambda ws, inputs, params, opts: crystallize_model(inputs["counts"], ws, params=params, memory=opts["memory"],
                                                           scheduler=opts["scheduler"], force=opts["force"]),
)
