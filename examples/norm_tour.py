"""A short tour of traintech.norm: drop-in layers, a pre-norm block, and the BatchNorm utilities.

Run: PYTHONPATH=src python examples/norm_tour.py
"""

from __future__ import annotations

import torch
from torch import nn

import traintech.norm as tn


class PreNormBlock(nn.Module):
    """A pre-norm Transformer MLP block using the fused residual add + RMSNorm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = tn.FusedAddRMSNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None) -> tuple:
        y, residual = self.norm(x, residual)  # y = rms_norm(x + residual), residual = x + residual
        return self.mlp(y), residual


def main() -> None:
    torch.manual_seed(0)
    # 1. Drop-in: a torch checkpoint loads into ours (and back).
    ours, theirs = tn.RMSNorm(64), nn.RMSNorm(64)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 10, 64)
    print("RMSNorm matches torch:", torch.allclose(ours(x), theirs(x), atol=1e-6))

    # 2. Pre-norm blocks pass the residual stream along.
    blocks = [PreNormBlock(64) for _ in range(2)]
    h, residual = x, None
    for block in blocks:
        h, residual = block(h, residual)
    print("residual stream:", tuple(residual.shape))

    # 3. BatchNorm utilities on a small CNN.
    cnn = nn.Sequential(
        nn.Conv2d(3, 48, 3, padding=1), tn.BatchNorm2d(48), nn.ReLU(),
        nn.Conv2d(48, 10, 3, padding=1), nn.BatchNorm2d(10), nn.ReLU(),
    )  # fmt: skip
    data = [torch.randn(16, 3, 8, 8) for _ in range(4)]
    tn.recalibrate_batchnorm(cnn, data)  # running stats = average over the 4 batches
    folded = tn.fold_batchnorm(cnn)  # eval copy with BatchNorm folded into the convs
    err = (folded(data[0]) - cnn.eval()(data[0])).abs().max().item()
    print(f"folded model max error: {err:.2e}")
    small_batch = tn.batchnorm_to_groupnorm(cnn, num_groups=32)  # 48 channels -> 24 groups
    print("converted:", small_batch[1], small_batch[4])


if __name__ == "__main__":
    main()
