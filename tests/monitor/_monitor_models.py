"""Small real models and a training loop shared by the monitor tests."""

from __future__ import annotations

import torch
from torch import nn

from traintech.monitor import Monitor


class SqrtAbs(nn.Module):
    """sqrt(|x|): finite forward, NaN gradient wherever x == 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs().sqrt()


class Log(nn.Module):
    """log(x): NaN forward for negative x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class LogBlock(nn.Module):
    """A container whose own functional code (torch.log between children) makes the NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.log(self.inner(x)))


def mlp(widths: tuple[int, ...] = (6, 16, 16, 1), act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def regression_data(n: int, d: int, generator: torch.Generator):
    x = torch.randn(n, d, generator=generator)
    w = torch.randn(d, 1, generator=generator)
    return x, torch.tanh(x @ w)


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    monitor: Monitor | None,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    batch: int = 32,
    start: int = 0,
    loss_scale: dict[int, float] | None = None,
) -> list[dict | None]:
    records = []
    n = x.shape[0]
    for t in range(start, start + steps):
        i = (t * batch) % n
        xb, yb = x[i : i + batch], y[i : i + batch]
        opt.zero_grad()
        loss = ((model(xb) - yb) ** 2).mean()
        if loss_scale and t in loss_scale:
            loss = loss * loss_scale[t]
        loss.backward()
        opt.step()
        if monitor is not None:
            records.append(monitor.step(loss=loss))
    return records
