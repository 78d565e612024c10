"""The exported Hugging Face layout (``ctstore export``), read back as a PhotonicGPT (docs/design.md §2).

``ctstore export`` writes a GPT-NeoX directory (:mod:`ctstore.export` explains the
correspondence); the two layout differences are row permutations, defined here
once for both directions:

* fused QKV: PhotonicGPT's ``c_attn`` rows are ``[q heads | k heads | v heads]``,
  GPT-NeoX's ``[q_h | k_h | v_h]`` per head;
* rotary pairs: interleaved ``(2i, 2i+1)`` in PhotonicGPT, halves ``(i, i + h/2)``
  in GPT-NeoX, inside each head of ``q`` and ``k``.

:func:`load_exported` inverts the export: the first ``model_vocab`` rows of the
embedding (a compact vocabulary's export appends rows for the tokenizer's
dropped tokens, see :mod:`ctstore.hftokenizer`), the permuted rows put back, and
the vocabulary map from ``ctstore_tokenizer.json``. So ``ctstore generate``
accepts an exported directory and samples exactly as from the model it came from.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..errors import CtstoreError

__all__ = ["TOKENIZER_FILE", "rotary_permutation", "qkv_row_order", "is_exported", "load_exported"]

TOKENIZER_FILE = "ctstore_tokenizer.json"


def rotary_permutation(head_dim: int):
    """Row order that turns interleaved rotary pairs (2i, 2i+1) into halves (i, i + head_dim/2)."""
    import torch

    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def qkv_row_order(n_embd: int, n_head: int):
    """Rows of PhotonicGPT's ``c_attn`` in the order GPT-NeoX's ``query_key_value`` expects."""
    import torch

    hd = n_embd // n_head
    rot = rotary_permutation(hd)
    rows = []
    for h in range(n_head):
        rows += [0 * n_embd + h * hd + rot, 1 * n_embd + h * hd + rot, 2 * n_embd + h * hd + torch.arange(hd)]
    return torch.cat(rows)


def is_exported(directory: str) -> bool:
    """True when ``directory`` is a local ``ctstore export`` output (GPT-NeoX config + ctstore_tokenizer.json)."""
    if not (os.path.isfile(os.path.join(directory, TOKENIZER_FILE))
            and os.path.isfile(os.path.join(directory, "config.json"))):
        return False
    try:
        with open(os.path.join(directory, "config.json")) as f:
            return json.load(f).get("model_type") == "gpt_neox"
    except (OSError, ValueError):
        return False


def load_exported(directory: str):
    """``(model, vocab_map or None, raw config)`` of an exported directory, as ``formats.model.load_model``."""
    import torch
    from safetensors.torch import load_file

    from ..model import GPTConfig, PhotonicGPT

    try:
        with open(os.path.join(directory, "config.json")) as f:
            neox = json.load(f)
        with open(os.path.join(directory, TOKENIZER_FILE), encoding="utf-8") as f:
            info = json.load(f)
        sd = load_file(os.path.join(directory, "model.safetensors"))
    except (OSError, ValueError) as exc:
        raise CtstoreError(f"{directory}: not a readable ctstore export ({exc})") from None
    vocab = int(info.get("model_vocab") or neox["vocab_size"])
    config = GPTConfig(vocab_size=vocab, n_layer=neox["num_hidden_layers"], n_head=neox["num_attention_heads"],
                       n_embd=neox["hidden_size"], block_size=neox["max_position_embeddings"],
                       bias=bool(neox.get("attention_bias", True)),
                       rope_base=float(neox.get("rotary_emb_base", 10000.0)),
                       tie_head=bool(neox.get("tie_word_embeddings", True)))
    back = torch.argsort(qkv_row_order(config.n_embd, config.n_head))
    state = {"transformer.wte.weight": sd["gpt_neox.embed_in.weight"][:vocab],
             "transformer.ln_f.weight": sd["gpt_neox.final_layer_norm.weight"]}
    names = [("input_layernorm", "ln_1"), ("post_attention_layernorm", "ln_2"), ("attention.dense", "attn.c_proj"),
             ("mlp.dense_h_to_4h", "mlp.c_fc"), ("mlp.dense_4h_to_h", "mlp.c_proj")]
    for i in range(config.n_layer):
        src, dst = f"gpt_neox.layers.{i}.", f"transformer.h.{i}."
        state[dst + "attn.c_attn.weight"] = sd[src + "attention.query_key_value.weight"][back]
        for a, b in names:
            state[dst + b + ".weight"] = sd[src + a + ".weight"]
        if config.bias:
            state[dst + "attn.c_attn.bias"] = sd[src + "attention.query_key_value.bias"][back]
            for a, b in names:
                state[dst + b + ".bias"] = sd[src + a + ".bias"]
    if config.bias:
        state["transformer.ln_f.bias"] = sd["gpt_neox.final_layer_norm.bias"]
    if not config.tie_head:
        state["lm_head.weight"] = sd["lm_head.weight"][:vocab]
    model = PhotonicGPT(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - ({"lm_head.weight"} if config.tie_head else set()):
        raise CtstoreError(f"{directory}: exported weights do not match its config (missing {missing})")
    vocab_map = None
    if info.get("compact"):
        vocab_map = np.full(int(info["tokenizer_vocab"]), vocab - 1, np.int64)
        vocab_map[np.asarray(info["model_to_tokenizer"], np.int64)] = np.arange(vocab - 1)
    raw = {**config.to_dict(), "tokenizer": info.get("encoding"), "tokenizer_vocab": info.get("tokenizer_vocab")}
    return model, vocab_map, raw
