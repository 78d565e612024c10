import numpy as np
import pytest
import torch

from ctstore.errors import CtstoreError
from ctstore.analysis.harmonic import reconstruct
from ctstore.crystallize import CrystallizeParams, crystallize_model
from ctstore.formats.model import load_model


def test_crystallized_model_weights_are_its_harmonic_parameters(session_ws, sample_counts):
    art = crystallize_model(sample_counts, session_ws, scheduler="sync",
                            params=CrystallizeParams(config="tiny", vocab=1024, power_iters=2))
    model, vocab_map, raw = load_model(art.path)
    from safetensors.torch import load_file

    h = load_file(f"{art.path}/harmonic.safetensors")
    d = model.config.n_embd
    for layer in range(model.config.n_layer):
        w = reconstruct(h[f"h.{layer}.amplitude"].numpy(), h[f"h.{layer}.centre"].numpy(),
                        h[f"h.{layer}.width"].numpy(), d)
        proj = model.transformer.h[layer].attn.c_proj.weight.detach().numpy().T
        scale = np.linalg.norm(proj) / np.linalg.norm(w)
        assert np.allclose(proj, w * scale, atol=1e-5 * np.abs(proj).max())
    assert raw["init"] == "crystallize" and vocab_map.max() == 1024
    report = art.manifest["report"]["layers"]
    assert [r["lags"] for r in report] == [[1, 3], [2, 4]]
    logits, _ = model(torch.zeros(1, 4, dtype=torch.long))
    assert torch.isfinite(logits).all()


def test_crystallize_needs_enough_lags(session_ws, sample_counts):
    with pytest.raises(CtstoreError, match=r"need lags 1..14; the count store has 1..10"):
        crystallize_model(sample_counts, session_ws, scheduler="sync", params=CrystallizeParams(config="ct-124m"))
