"""``randomize_norm_state``: random parameters and running statistics for a norm layer.

Import as ``from _norm_helpers import randomize_norm_state`` (``tests`` is on pytest's path).
"""

from __future__ import annotations

import torch
from torch import nn


def randomize_norm_state(
    module: nn.Module,
    gen: torch.Generator,
    dtype: torch.dtype | None = None,
    num_batches_tracked: int | None = None,
) -> None:
    """Fill ``module``'s parameters and running stats in place with draws from ``gen``.

    Parameters ~ N(0, 1); ``running_mean`` ~ N(0, 1); ``running_var`` ~ U(0.5, 1.5) (positive);
    drawn in ``dtype`` (torch's default dtype if None) in parameter-then-buffer order.
    ``num_batches_tracked`` is filled with that value if given, else left alone.
    """
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype))
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=dtype) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen, dtype=dtype))
            elif name.endswith("num_batches_tracked") and num_batches_tracked is not None:
                b.fill_(num_batches_tracked)
