"""A 50-layer ReLU MLP: the activation scale layer by layer, from N(0, 0.01) and after init_model.

Run: PYTHONPATH=src python examples/init_variance.py
"""

from __future__ import annotations

import torch
from torch import nn

import traintech.init as ti


def mlp(depth: int = 50, width: int = 256) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers)


def relu_ratios(model: nn.Module, x: torch.Tensor) -> list[float]:
    profile = ti.variance_profile(model, x)
    q = profile.input.second_moment
    return [row.second_moment / q for row in profile if row.kind == "ReLU"]


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 256, generator=gen)
    small = mlp()
    with torch.no_grad():
        for layer in small:
            if isinstance(layer, nn.Linear):
                layer.weight.normal_(0.0, 0.01, generator=gen)
                layer.bias.zero_()
    good = mlp()
    report = ti.init_model(good, generator=gen)
    print(str(report).splitlines()[0])
    print(f"{'layer':>5}  {'N(0, 0.01)':>12}  {'init_model':>10}   E[relu(y)^2] / E[x^2]")
    for depth, (a, b) in enumerate(zip(relu_ratios(small, x), relu_ratios(good, x), strict=True)):
        if depth % 5 == 4 or depth < 3:
            print(f"{depth + 1:>5}  {a:>12.3g}  {b:>10.3f}")


if __name__ == "__main__":
    main()
