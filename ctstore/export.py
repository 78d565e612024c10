"""``ctstore export``: a PhotonicGPT model (or a run's model) → a Hugging Face ``transformers`` directory.

PhotonicGPT is a pre-LayerNorm decoder with rotary position embeddings, an exact
(erf) GELU MLP of width 4d, a fused ``c_attn`` and, by default, an output head
tied to the token embedding. ``transformers`` already has that architecture:
GPT-NeoX with ``use_parallel_residual=False`` (sequential residual, one
LayerNorm before attention and one before the MLP), ``partial_rotary_factor``
(``rotary_pct``) 1.0, ``hidden_act="gelu"`` (exact), LayerNorm eps 1e-5 (torch's
default, which PhotonicGPT uses) and ``tie_word_embeddings``. So the export
writes a GPT-NeoX ``config.json`` and ``model.safetensors`` that
``AutoModelForCausalLM.from_pretrained(OUT_DIR)`` loads without custom code.

Two layouts differ and are matched by permuting weights, never by changing the
model:

* fused QKV: PhotonicGPT's ``c_attn`` output is ``[q heads | k heads | v heads]``;
  GPT-NeoX views it per head as ``[q_h | k_h | v_h]``. Rows are regrouped per head.
* rotary convention: PhotonicGPT rotates interleaved pairs ``(2i, 2i+1)`` of a
  head; GPT-NeoX rotates the halves ``(i, i + h/2)`` (``rotate_half``), with the
  same frequency ``base^(-2i/h)`` for pair ``i``. Applying one permutation
  ``[0, 2, 4, ..., 1, 3, 5, ...]`` to the rows of ``q`` and ``k`` inside each head
  turns one convention into the other; attention scores are dot products
  ``q·k`` over the head, unchanged by permuting both alike. ``v`` is not permuted.

GPT-NeoX always has biases in its MLP and LayerNorms; a model built with
``bias=False`` gets zero biases there (``attention_bias`` follows the model).
An untied output head (a ``lm_head.weight`` not shared with the embedding) is
exported as ``lm_head.weight`` with ``tie_word_embeddings=false``.

The tokenizer: ``tokenizer.json`` is a ``tokenizers`` byte-level BPE rebuilt from
the tiktoken ranks (:mod:`ctstore.hftokenizer`), which encodes text to the same
ids as ctstore, so ``AutoTokenizer.from_pretrained(OUT_DIR)`` and
``pipeline("text-generation", model=OUT_DIR)`` work. For a compact vocabulary
the tokenizer gives each dropped token an id of its own past the model's ids;
the export appends a copy of the unknown token's embedding row for each, and
``generation_config.json`` suppresses them in sampling (see
:mod:`ctstore.hftokenizer`): ids below the model's vocabulary are unchanged, and
the logits over them are ctstore's. An encoding that cannot be loaded (a model
made with a test tokenizer) is exported without ``tokenizer.json``, and says so.
``ctstore_tokenizer.json`` still names the encoding and, for a compact
vocabulary, lists the tokenizer id of every model id.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import torch

from .deletion import contains_workspace, inside_workspace
from .errors import CtstoreError, one_line
from .formats.hf import TOKENIZER_FILE, qkv_row_order, rotary_permutation  # noqa: F401 - re-exported
from .formats.model import inverse_vocab, load_model, resolve_model_dir
from .location import atomic_path
from .log import log
from .model import PhotonicGPT
from .stage import Input, Option, Stage

__all__ = ["neox_config", "neox_state_dict", "tokenizer_info", "export_hf", "write_hf"]



def is_tied(model: PhotonicGPT) -> bool:
    """True when the output head shares its storage with the token embedding."""
    return model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def neox_config(model: PhotonicGPT) -> dict:
    """A ``GPTNeoXConfig`` dict equivalent to the model's :class:`GPTConfig`."""
    c = model.config
    rope = {"rope_type": "default", "rope_theta": float(c.rope_base), "partial_rotary_factor": 1.0}
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "intermediate_size": 4 * c.n_embd,
        "hidden_act": "gelu",  # exact erf GELU, as F.gelu
        "max_position_embeddings": c.block_size,
        "layer_norm_eps": 1e-5,  # nn.LayerNorm's default
        "use_parallel_residual": False,
        "attention_bias": bool(c.bias),
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": is_tied(model),
        "rope_parameters": rope,  # transformers >= 5
        "rotary_pct": 1.0,  # transformers 4.x names of the same settings
        "rotary_emb_base": float(c.rope_base),
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "dtype": "float32",
    }


def neox_state_dict(model: PhotonicGPT) -> dict[str, torch.Tensor]:
    """GPT-NeoX tensors (float32, contiguous) holding exactly the model's weights."""
    c = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    order = qkv_row_order(c.n_embd, c.n_head)

    def bias_or_zeros(key: str, n: int) -> torch.Tensor:
        return sd[key] if key in sd else torch.zeros(n)

    out = {"gpt_neox.embed_in.weight": sd["transformer.wte.weight"]}
    for i in range(c.n_layer):
        src, dst = f"transformer.h.{i}.", f"gpt_neox.layers.{i}."
        for a, b in (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")):
            out[dst + b + ".weight"] = sd[src + a + ".weight"]
            out[dst + b + ".bias"] = bias_or_zeros(src + a + ".bias", c.n_embd)
        out[dst + "attention.query_key_value.weight"] = sd[src + "attn.c_attn.weight"][order]
        out[dst + "attention.dense.weight"] = sd[src + "attn.c_proj.weight"]
        if c.bias:
            out[dst + "attention.query_key_value.bias"] = sd[src + "attn.c_attn.bias"][order]
            out[dst + "attention.dense.bias"] = sd[src + "attn.c_proj.bias"]
        out[dst + "mlp.dense_h_to_4h.weight"] = sd[src + "mlp.c_fc.weight"]
        out[dst + "mlp.dense_h_to_4h.bias"] = bias_or_zeros(src + "mlp.c_fc.bias", 4 * c.n_embd)
        out[dst + "mlp.dense_4h_to_h.weight"] = sd[src + "mlp.c_proj.weight"]
        out[dst + "mlp.dense_4h_to_h.bias"] = bias_or_zeros(src + "mlp.c_proj.bias", c.n_embd)
    out["gpt_neox.final_layer_norm.weight"] = sd["transformer.ln_f.weight"]
    out["gpt_neox.final_layer_norm.bias"] = bias_or_zeros("transformer.ln_f.bias", c.n_embd)
    if not is_tied(model):
        out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def tokenizer_info(raw_config: dict, vocab_map: np.ndarray | None, vocab_size: int) -> dict:
    """What a user needs to turn text into model ids: encoding name and compact vocabulary."""
    info = {"tokenizer": "tiktoken", "encoding": raw_config.get("tokenizer"),
            "tokenizer_vocab": raw_config.get("tokenizer_vocab"), "model_vocab": vocab_size,
            "compact": vocab_map is not None}
    if vocab_map is not None:
        unk = vocab_size - 1
        model_to_tokenizer = inverse_vocab(vocab_map, vocab_size)[:unk]
        info.update(unk_id=int(unk), unk_text="⟨unk⟩", tokenizer_vocab=int(len(vocab_map)),
                    model_to_tokenizer=[int(x) for x in model_to_tokenizer],
                    usage="model id of tokenizer id t: index of t in model_to_tokenizer, else unk_id")
    return info


def hf_tokenizer(raw_config: dict, vocab_map: np.ndarray | None, model_vocab: int):
    """``(tokenizers.Tokenizer, number of ids)`` for the model's encoding, or ``(None, reason)``."""
    from .encoding import load_encoding
    from .hftokenizer import build_tokenizer

    name = raw_config.get("tokenizer")
    try:
        import tokenizers  # noqa: F401 - the [hf] extra
    except ImportError:
        return None, "the tokenizers package is not installed (pip install 'ctstore[hf]')"
    if not name:
        return None, "the model names no encoding"
    try:
        enc, _ = load_encoding(name)
    except CtstoreError as exc:
        return None, str(exc)
    if vocab_map is None and model_vocab < enc.n_vocab:
        return None, f"the model's {model_vocab} ids cannot hold encoding {name!r}'s {enc.n_vocab} tokens"
    return build_tokenizer(enc, vocab_map, model_vocab)


def widen_vocabulary(state: dict[str, torch.Tensor], model_vocab: int, n_ids: int) -> dict[str, torch.Tensor]:
    """Append ``n_ids - model_vocab`` rows, each a copy of the unknown token's (the last model id), to the
    embedding and an untied head: the tokenizer's ids for tokens a compact vocabulary dropped."""
    out = dict(state)
    for key in ("gpt_neox.embed_in.weight", "embed_out.weight", "lm_head.weight"):
        if key in out:
            unk = out[key][model_vocab - 1]
            out[key] = torch.cat([out[key], unk.expand(n_ids - model_vocab, -1)]).contiguous()
    return out


def export_hf(model_directory: str, out_dir: str, force: bool = False) -> dict:
    """Export the model saved in ``model_directory`` (see :func:`write_hf`)."""
    if os.path.exists(os.path.abspath(out_dir.rstrip("/"))) and not force:
        raise CtstoreError(f"{out_dir}: already exists (use --force to replace it)")
    model, vocab_map, raw = load_model(model_directory)
    return write_hf(model, vocab_map, raw, out_dir, force=force)


def write_hf(model: PhotonicGPT, vocab_map: np.ndarray | None, raw_config: dict, out_dir: str,
             force: bool = False) -> dict:
    """Write ``out_dir`` (config.json, model.safetensors, generation_config.json, tokenizer.json,
    tokenizer_config.json, ctstore_tokenizer.json) atomically.

    The files are written into a temporary sibling directory and renamed into
    place (:func:`~ctstore.location.atomic_path`), so ``out_dir`` either does not
    exist or is complete. An existing ``out_dir`` is replaced only with ``force``:
    it is moved aside just before the rename and removed after it.
    """
    from safetensors.torch import save_file

    out_dir = os.path.abspath(out_dir.rstrip("/"))
    if os.path.exists(out_dir) and not force:
        raise CtstoreError(f"{out_dir}: already exists (use --force to replace it)")
    if os.path.lexists(out_dir):  # only with force: never a workspace, one inside it, or a part of one
        refuse_workspace_target(out_dir)
    from .hftokenizer import tokenizer_config

    old = None
    state, config = neox_state_dict(model), neox_config(model)
    tokenizer, n_ids = hf_tokenizer(raw_config, vocab_map, model.config.vocab_size)
    generation = None
    if tokenizer is None:
        log(f"export: no tokenizer.json ({n_ids}); {TOKENIZER_FILE} names the encoding")
    elif n_ids > model.config.vocab_size:  # a compact vocabulary: ids of dropped tokens act as <unk>
        state = widen_vocabulary(state, model.config.vocab_size, n_ids)
        generation = {"suppress_tokens": list(range(model.config.vocab_size, n_ids))}
        config["vocab_size"] = n_ids
    with atomic_path(out_dir) as tmp:
        os.makedirs(tmp)
        save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        if generation is not None:
            with open(os.path.join(tmp, "generation_config.json"), "w") as f:
                json.dump(generation, f)
        with open(os.path.join(tmp, TOKENIZER_FILE), "w", encoding="utf-8") as f:
            json.dump(tokenizer_info(raw_config, vocab_map, model.config.vocab_size), f, ensure_ascii=False)
        if tokenizer is not None:
            tokenizer.save(os.path.join(tmp, "tokenizer.json"))
            with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
                json.dump(tokenizer_config(vocab_map is not None, model.config.block_size), f, indent=2,
                          ensure_ascii=False)
        if os.path.exists(out_dir):
            old = f"{out_dir}.old-{os.getpid()}"
            os.replace(out_dir, old)
    if old:
        shutil.rmtree(old, ignore_errors=True)
    log(f"export: GPT-NeoX ({config['num_hidden_layers']}L/{config['num_attention_heads']}H/"
        f"{config['hidden_size']}D, vocab {config['vocab_size']}, "
        f"{'tied' if config['tie_word_embeddings'] else 'untied'} head) at {out_dir}")
    return {"out_dir": out_dir, "format": "hf", "architecture": "GPTNeoXForCausalLM", "config": config}


def refuse_workspace_target(out_dir: str, ws=None) -> None:
    """``--force`` never replaces a workspace, a directory holding one, or anything inside one."""
    real = os.path.realpath(out_dir)
    if ws is not None and ws.is_local:
        root = os.path.realpath(ws.root)
        if root == real or root.startswith(real + os.sep) or real.startswith(root + os.sep):
            raise CtstoreError(f"{one_line(out_dir)}: is, holds or lies inside the workspace {one_line(ws.root)}; "
                               "export writes elsewhere")
    holder = inside_workspace(real)
    if holder is not None:
        raise CtstoreError(f"{one_line(out_dir)}: lies inside the workspace {one_line(holder)}; export refuses to "
                           "replace it (choose a directory outside any workspace)")
    if os.path.isdir(real) and not os.path.islink(out_dir) and contains_workspace(real):
        raise CtstoreError(f"{one_line(out_dir)}: holds a ctstore workspace; export refuses to replace it")


def _export_stage(ws, inputs, params, opts):
    out_dir = os.path.abspath(inputs["out_dir"].rstrip("/"))
    if opts["force"] and os.path.lexists(out_dir):
        refuse_workspace_target(out_dir, ws)
    with ws.export_record(out_dir):  # a killed export's OUT.partial-* is then removed by ctstore gc
        result = export_hf(resolve_model_dir(inputs["model"], ws), out_dir, force=opts["force"])
    if opts["json"]:
        print(json.dumps(result, sort_keys=True))


STAGE = Stage(
    name="export", kind=None, params=None, compute=False, run=_export_stage,
    help="model or run -> a directory transformers loads (GPT-NeoX)",
    inputs=(Input("model", None, "model or run artifact fingerprint (or a model directory)"),
            Input("out_dir", None, "directory to create")),
    options=(Option("--format", "hf: transformers GPT-NeoX (default)", default="hf", choices=("hf",)),
             Option("--force", "replace an existing OUT_DIR", switch=True)),
)
