"""Monte Carlo dropout on a toy regression: the spread grows away from the training data.

Run: ``python examples/dropout_mc_uncertainty.py`` (CPU, a few seconds).
"""

from __future__ import annotations

import torch
from torch import nn

import traintech.dropout as D


def main() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(256, 1, generator=gen) * 4 - 2  # training inputs in [-2, 2]
    y = torch.sin(2 * x) + 0.05 * torch.randn(256, 1, generator=gen)
    model = nn.Sequential(
        nn.Linear(1, 64),
        nn.ReLU(),
        D.Dropout(0.1),
        nn.Linear(64, 64),
        nn.ReLU(),
        D.Dropout(0.1),
        nn.Linear(64, 1),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = D.DropoutScheduler(model, total_steps=200)  # curriculum: ramp 0 -> 0.1
    for _ in range(400):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    grid = torch.linspace(-4, 4, 9).unsqueeze(1)
    res = D.mc_predict(model, grid, n_samples=100, generator=torch.Generator().manual_seed(1))
    print("   x    sin(2x)   MC mean   MC std")
    for xi, mi, si in zip(grid.flatten(), res.mean.flatten(), res.std.flatten(), strict=True):
        inside = "  (training range)" if abs(xi) <= 2 else ""
        print(f"{xi:5.1f}  {torch.sin(2 * xi):8.3f}  {mi:8.3f}  {si:7.3f}{inside}")


if __name__ == "__main__":
    main()
