"""A nanoGPT-style causal transformer: the LM recipe's teacher and student are two sizes of it.

Token ids (B, L) of any integer dtype (a token file's uint16 as stage 1 passes them) go in,
next-token logits (B, L, V) come out; position p sees tokens 0..p only. A checkpoint holds the
GPTConfig (JSON), the state dict, the training config and the tokenizer identity.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from softtargets.errors import CheckpointError, ConfigError
from softtargets.torchfiles import safe_load, save_atomic


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """The size of a GPT: vocabulary, context length, layers, heads, width, dropout."""

    vocab_size: int
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"GPTConfig: {name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"GPTConfig: n_embd {self.n_embd} must be a multiple of n_head "
                              f"{self.n_head}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"GPTConfig: dropout must be in [0, 1), got {self.dropout!r}")

    def to_json(self) -> dict[str, Any]:
        """The config as a JSON object (`GPTConfig(**d)` gives it back)."""
        return dataclasses.asdict(self)


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a 4x MLP."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.ln1, self.ln2 = nn.LayerNorm(cfg.n_embd), nn.LayerNorm(cfg.n_embd)
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(),
                                 nn.Linear(4 * cfg.n_embd, cfg.n_embd), nn.Dropout(cfg.dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=2)  # each (B, L, D)
        q, k, v = (t.view(B, L, self.n_head, D // self.n_head).transpose(1, 2)
                   for t in (q, k, v))  # (B, H, L, D / H)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                             dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(att.transpose(1, 2).reshape(B, L, D))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """tokens (B, L) -> next-token logits (B, L, vocab_size); the output layer is tied to the
    token embedding."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        L = tokens.shape[1]
        if L > self.cfg.block_size:
            raise ConfigError(f"GPT: {L} tokens per sequence exceed block_size "
                              f"{self.cfg.block_size}; use sequences of at most that length")
        pos = torch.arange(L, device=tokens.device)
        h = self.drop(self.tok(tokens.long()) + self.pos(pos))  # (B, L, D)
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln(h))  # (B, L, V)

    def num_params(self) -> int:
        """Parameters, the tied output layer counted once."""
        return sum(p.numel() for p in self.parameters())


def save_model(path: str | os.PathLike[str], model: GPT, **extra: Any) -> None:
    """Write {config, state_dict, **extra} atomically (temp file, then rename)."""
    save_atomic({"config": model.cfg.to_json(), "state_dict": model.state_dict(), **extra}, path)


def load_model(path: str | os.PathLike[str]) -> tuple[GPT, dict[str, Any]]:
    """The GPT of a checkpoint written by save_model (eval mode) and the checkpoint dict."""
    ckpt = safe_load(path, fix="train an LM teacher with `softtargets lm-teacher` "
                     "(make lm-teacher)")
    try:
        model = GPT(GPTConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{str(path)!r} is not an LM checkpoint of softtargets "
                              f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return model.eval(), ckpt
