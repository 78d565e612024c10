"""Stage ``seed``: embeddings → ``model`` artifact (DESIGN.md section 4, Paper 113 §5).

Spectral seeding from ``EᵀE = U Λ Uᵀ`` (d × d, eigenvalues descending). Layer l
of L uses the columns of U rolled by ``s_l = l·d/L`` and the eigenvalues rolled
the same way, ``M_l = diag(√Λ_l) R_lᵀ``:

* attention ``c_attn`` = ``[M_l; M_l; M_l]`` (Q, K and V share the layer's
  rotation; the paper gives one matrix per layer), ``c_proj`` = ``M_lᵀ``;
* MLP ``c_fc`` = four stacked ``M`` at rolls ``s_l + j·d/4`` (j = 0..3): the
  eigenvalue-weighted rotated directions; MLP ``c_proj`` = ``c_fcᵀ`` (adjoint);
* LayerNorms identity, biases zero, head tied to the token embedding;
* token embedding rows from E (compact ids when a compact vocabulary is used).

Every seeded matrix is rescaled to the Frobenius norm of the random
initialisation it replaces (the same ``torch.manual_seed(seed)`` builds that
random model), so a comparison with ``init="random"`` measures structure, not
scale. ``init="embeddings"`` seeds only the token embedding (ablation f).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ._util import CtstoreError, log
from .analysis.spectral import spectral_gap_ratio
from .model import PhotonicGPT, get_config, save_model
from .workspace import Workspace, build_artifact, fingerprint

__all__ = ["SeedParams", "seed_model", "spectral_layer_matrices"]

FORMAT_VERSION = 1
INITS = ("spectral", "random", "embeddings")


@dataclass(frozen=True)
class SeedParams:
    config: str = "tiny"
    init: str = "spectral"
    vocab: int | None = None  # compact vocabulary size V_model (None: the full tokenizer vocabulary)
    seed: int = 0
    width: int | None = None  # override n_embd (heads follow, keeping the head size), for width sweeps

    def __post_init__(self):
        if self.init not in INITS:
            raise CtstoreError(f"--init must be one of {', '.join(INITS)}, not {self.init!r}")


def eigen_basis(E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors of ``EᵀE``."""
    lam, U = np.linalg.eigh(E.astype(np.float64).T @ E.astype(np.float64))
    order = np.argsort(lam)[::-1]
    return np.clip(lam[order], 0, None), U[:, order]


def rolled(U: np.ndarray, lam: np.ndarray, shift: int) -> np.ndarray:
    """``diag(√Λ_shift) R_shiftᵀ`` with ``R = roll(U, shift, columns)``."""
    R = np.roll(U, shift, axis=1)
    return np.sqrt(np.roll(lam, shift))[:, None] * R.T


def spectral_layer_matrices(U: np.ndarray, lam: np.ndarray, layer: int, n_layer: int) -> dict[str, np.ndarray]:
    d = U.shape[0]
    s = layer * d // n_layer
    M = rolled(U, lam, s)
    fc = np.concatenate([rolled(U, lam, s + j * d // 4) for j in range(4)], axis=0)
    return {"attn.c_attn.weight": np.concatenate([M, M, M], axis=0), "attn.c_proj.weight": M.T,
            "mlp.c_fc.weight": fc, "mlp.c_proj.weight": fc.T}


def _rescaled(new: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(new, dtype=like.dtype)
    norm = t.norm()
    return t * (like.norm() / norm) if norm > 0 else like.clone()


def build_seeded_model(E_full: np.ndarray, rank: np.ndarray | None, params: SeedParams, n_vocab: int):
    """Return ``(model, vocab_map, report)``; ``E_full`` is (V, d) indexed by tokenizer id."""
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
    config = get_config(params.config, vocab_size=vocab_size)
    if params.width is not None:
        head = config.n_embd // config.n_head
        config = get_config(params.config, vocab_size=vocab_size, n_embd=params.width,
                            n_head=max(1, params.width // head))
    if params.init != "random" and E_full.shape[1] != config.n_embd:
        raise CtstoreError(f"config {params.config}: n_embd={config.n_embd} does not fit the embedding "
                           f"dimension d={E_full.shape[1]} (run k0 with --dim {config.n_embd})")
    torch.manual_seed(params.seed)
    model = PhotonicGPT(config)
    report: dict = {"config": config.to_dict(), "init": params.init, "params": model.num_params()}
    if params.init == "random":
        return model, vocab_map, report
    with torch.no_grad():
        wte = model.transformer.wte.weight
        rows = np.zeros((vocab_size, config.n_embd), np.float32)
        rows[: len(kept)] = E_full[kept]
        if compact:
            rest = np.setdiff1d(np.arange(n_vocab), kept)
            rows[-1] = E_full[rest].mean(axis=0) if rest.size else 0.0
        wte.copy_(_rescaled(rows, wte))
        lam, U = eigen_basis(E_full[kept])
        report["spectral_gap_ratio"] = spectral_gap_ratio(lam)
        report["eigenvalues_head"] = [float(x) for x in lam[:8]]
        if params.init == "spectral":
            seeded = []
            for l, block in enumerate(model.transformer.h):
                mats = spectral_layer_matrices(U, lam, l, config.n_layer)
                for name, value in mats.items():
                    p = block.get_parameter(name)
                    p.copy_(_rescaled(value, p))
                for ln in (block.ln_1, block.ln_2):
                    ln.weight.fill_(1.0)
                    if ln.bias is not None:
                        ln.bias.zero_()
                seeded.append(block.attn.c_attn.weight.flatten().clone())
            report["layer_cosine"] = _pairwise_cosines(seeded)
    return model, vocab_map, report


def _pairwise_cosines(mats: list[torch.Tensor]) -> dict:
    out = {}
    for i, j in itertools.combinations(range(len(mats)), 2):
        out[f"{i}-{j}"] = float(torch.nn.functional.cosine_similarity(mats[i], mats[j], dim=0))
    vals = list(out.values())
    return {"pairs": out, "mean": float(np.mean(vals)) if vals else None}


def seed_model(embeddings, workspace: Workspace | None = None, *, params: SeedParams | None = None,
               force: bool = False):
    """Build a PhotonicGPT from an embeddings artifact (or random) as a ``model`` artifact."""
    from .countstore import CountStore
    from .k0 import load_embeddings

    ws = workspace or embeddings.workspace
    params = params or SeedParams()
    fp = fingerprint("model", FORMAT_VERSION, asdict(params), {"embeddings": embeddings.fingerprint})

    def build(path: str) -> dict:
        E, _spectrum, _active, attrs = load_embeddings(embeddings)
        counts = ws.get(embeddings.manifest["inputs"]["counts"], kind="counts")
        rank = CountStore.from_artifact(counts).rank if params.vocab else None
        model, vocab_map, report = build_seeded_model(E, rank, params, E.shape[0])
        extra = {"tokenizer": embeddings.manifest.get("tokenizer"), "tokenizer_vocab": int(E.shape[0]),
                 "init": params.init, "operator": attrs.get("operator")}
        local = path if ws.is_local else _local_tmp(path)
        save_model(model, local, vocab_map, extra)
        if not ws.is_local:
            ws.fs.put(local, path, recursive=True)
        if "spectral_gap_ratio" in report:
            log(f"seed: spectral gap ratio {report['spectral_gap_ratio']:.4f}"
                + (f", mean layer cosine {report['layer_cosine']['mean']:.4f}" if "layer_cosine" in report else ""))
        log(f"seed: {params.init} {params.config}, {report['params'] / 1e6:.2f}M parameters")
        return {"format_version": FORMAT_VERSION, "params": asdict(params),
                "inputs": {"embeddings": embeddings.fingerprint}, **extra, "report": report}

    return build_artifact(ws, "model", fp, build, force=force)[0]


def _local_tmp(path: str) -> str:
    import tempfile

    return os.path.join(tempfile.mkdtemp(prefix="ctstore-model-"), os.path.basename(path))


def add_parser(sub, common) -> None:
    s = sub.add_parser("seed", help="embeddings -> PhotonicGPT (spectral seeding or random init)")
    s.add_argument("embeddings", help="embeddings artifact fingerprint (or unique prefix)")
    s.add_argument("--config", default="tiny", help="tiny, small, ct-10m, ct-124m or a config JSON file")
    s.add_argument("--init", default="spectral", choices=list(INITS))
    s.add_argument("--vocab", type=int, default=None, help="compact vocabulary: top-N corpus tokens + <unk>")
    s.add_argument("--seed", type=int, default=0)
    common(s)


def run_cli(args, ws):
    emb = ws.get(args.embeddings, kind="embeddings")
    return seed_model(emb, ws, params=SeedParams(args.config, args.init, args.vocab, args.seed), force=args.force)
