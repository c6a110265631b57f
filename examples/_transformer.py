"""A small pre-norm Transformer language model and a synthetic task, shared by the examples.

The task: each sequence follows ``x[t+1] = (a * x[t] + b) mod vocab`` for a per-sequence random
``(a, b)`` pair from a small set, so the model must infer the rule from the context. Batches are
generated from the step number alone, so every rank can build the same global batch and take
its own slice (which is what a DistributedSampler does with a real dataset).
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from traintech.norm import RMSNorm


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = RMSNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    """Token + position embeddings, ``depth`` blocks, a final RMSNorm and a linear head."""

    def __init__(
        self, vocab: int = 32, dim: int = 32, heads: int = 4, depth: int = 2, seq_len: int = 16
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(seq_len, dim))
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = RMSNorm(dim)
        self.head = nn.Linear(dim, vocab)
        mask = torch.triu(torch.full((seq_len, seq_len), float("-inf")), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        mask = self.mask[: tokens.shape[1], : tokens.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x))


def batch(step: int, size: int, vocab: int = 32, seq_len: int = 16) -> tuple[Tensor, Tensor]:
    """The global batch of ``step``: (inputs, next-token targets), each ``(size, seq_len)``."""
    g = torch.Generator().manual_seed(1000 + step)
    a = torch.tensor([1, 3, 5, 7])[torch.randint(0, 4, (size, 1), generator=g)]
    b = torch.randint(0, vocab, (size, 1), generator=g)
    x = torch.empty(size, seq_len + 1, dtype=torch.long)
    x[:, 0] = torch.randint(0, vocab, (size,), generator=g)
    for t in range(seq_len):
        x[:, t + 1] = (a[:, 0] * x[:, t] + b[:, 0]) % vocab
    return x[:, :-1], x[:, 1:]


def rank_batch(step: int, size: int, rank: int, world: int) -> tuple[Tensor, Tensor]:
    """This rank's equal share of the global batch of ``step`` (``size`` divisible by ``world``)."""
    x, y = batch(step, size)
    per_rank = size // world
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    return x[mine], y[mine]


def parse_args(description: str | None) -> argparse.Namespace:
    """The command-line options both distributed examples take."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--nan-step", type=int, default=-1, help="inject a NaN on rank 1 here")
    return parser.parse_args()
