"""Small closures that perform one planned init (so planning and writing are separate steps)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["apply_fill", "embedding_normal", "fill", "noop", "zero"]


def noop() -> None:
    return None


def apply_fill(fill: Callable[[Tensor], object], param: Tensor) -> Callable[[], None]:
    def run() -> None:
        fill(param)

    return run


def zero(param: Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            param.zero_()

    return run


def fill(param: Tensor, value: float) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            param.fill_(value)

    return run


def embedding_normal(
    module: nn.Module, param: Tensor, generator: torch.Generator | None
) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            param.normal_(0.0, 1.0, generator=generator)
            padding_idx = getattr(module, "padding_idx", None)
            if padding_idx is not None:
                param[padding_idx].zero_()

    return run
