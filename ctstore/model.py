"""PhotonicGPT: a small decoder-only GPT (docs/design.md §5).

Pre-LayerNorm blocks, fused ``c_attn`` (3d × d), ``c_proj``, MLP ``c_fc`` (4d × d)
→ GELU → ``c_proj`` (d × 4d), rotary position embeddings (no learned positions),
causal attention through ``scaled_dot_product_attention``, output head tied to
the token embedding (``tie_head=False``: a separate ``head`` matrix, initialised
like the other linear layers, so a frozen embedding does not freeze the output).

Configs: ``tiny`` (tests: 2L/2H/64D, block 64), ``small`` (4L/4H/128D, block 128; the cpu
profile), ``medium`` (6L/6H/192D, block 128; the cpu-large profile), ``ct-10m`` (the seeds' 10.2M
model: 8L/8H/256D, block 512) and ``ct-124m`` (12L/12H/768D, block 1024; with
the GPT-2 vocabulary of 50,257 tokens that is ~124M parameters, tied head).
A config file is JSON with the fields of :class:`GPTConfig`.

Compact vocabulary: a model may use only the ``V_model`` most frequent tokens
of the corpus plus one unknown token; ``vocab_map`` (tokenizer id → model id)
is stored with the model. Saving and loading: :mod:`ctstore.formats.model`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import CtstoreError

__all__ = ["GPTConfig", "PhotonicGPT", "CONFIGS", "get_config"]


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    block_size: int = 64
    dropout: float = 0.0
    bias: bool = True
    rope_base: float = 10000.0
    tie_head: bool = True

    def __post_init__(self):
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise CtstoreError(f"config: n_embd={self.n_embd} must split into {self.n_head} heads of even size")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


CONFIGS = {
    "tiny": GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64),
    "small": GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=128),
    "medium": GPTConfig(n_layer=6, n_head=6, n_embd=192, block_size=128),
    "ct-10m": GPTConfig(n_layer=8, n_head=8, n_embd=256, block_size=512),
    "ct-124m": GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024),
}


def get_config(name_or_path: str, **overrides) -> GPTConfig:
    if name_or_path in CONFIGS:
        base = CONFIGS[name_or_path]
    elif os.path.isfile(name_or_path):
        try:
            with open(name_or_path) as f:
                base = GPTConfig.from_dict(json.load(f))
        except (json.JSONDecodeError, TypeError) as exc:
            raise CtstoreError(f"{name_or_path}: not a valid config JSON ({exc})") from None
    else:
        raise CtstoreError(f"config {name_or_path!r}: not one of {', '.join(CONFIGS)} and not a file")
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def _rope_cache(T: int, head_dim: int, base: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv)
    return angles.cos(), angles.sin()


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.n_head, self.n_embd, self.dropout = c.n_head, c.n_embd, c.dropout
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        shape = (B, T, self.n_head, C // self.n_head)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=c.bias)
        self.c_proj = nn.Linear(4 * c.n_embd, c.n_embd, bias=c.bias)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.attn = CausalSelfAttention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.ln_1(x), cos, sin)
        return x + self.mlp(self.ln_2(x))


class PhotonicGPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        if config.tie_head:
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            self.lm_head.weight = self.transformer.wte.weight  # tied
        else:  # its own name: state dicts and checkpoints that skip the tied "lm_head.weight" keep it
            self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scaled init of residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def output_head(self) -> nn.Linear:
        return self.lm_head if self.config.tie_head else self.head

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied head is counted once

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
        cos, sin = _rope_cache(T, self.config.n_embd // self.config.n_head, self.config.rope_base, idx.device)
        x = self.transformer.wte(idx)
        for block in self.transformer.h:
            x = block(x, cos, sin)
        logits = self.output_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6N for the weights + attention (PaLM appendix B)."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * c.block_size
