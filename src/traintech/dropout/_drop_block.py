"""``DropBlock2d``: drop contiguous square regions of feature maps."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from traintech.dropout import functional as F
from traintech.dropout._checks import check_generator, check_p


class DropBlock2d(nn.Module):
    r"""DropBlock (Ghiasi et al. 2018): zero ``block_size`` x ``block_size`` squares, rescale.

    Seeds :math:`\sim \mathrm{Bernoulli}(\gamma)` on the block corners whose square fits in
    the map; every seed zeroes its square; kept units are scaled by
    :math:`\mathrm{numel}(M)/\mathrm{sum}(M)`. :math:`\gamma` makes the expected dropped
    fraction exactly ``p`` (overlaps counted once; see
    :func:`traintech.dropout.functional.drop_block2d`), or is the paper's

    .. math::
        \gamma = \frac{p}{s^2}\,\frac{HW}{(H-s+1)(W-s+1)}

    with ``exact_rate=False``. Used on the last conv stages of ResNets (paper: p=0.1,
    block_size=7 on ResNet-50 stages 3-4, ramped up from 0 over training).
    Paper: https://arxiv.org/abs/1810.12890.

    Args:
        p: expected fraction of dropped units, in ``[0, 1]``.
        block_size: side of the squares, ``>= 1`` (and ``<= min(H, W)`` at forward time).
        exact_rate: solve for :math:`\gamma` (default) instead of the paper's formula.
        generator: source of randomness (default: torch's global generator).

    Example:
        >>> m = DropBlock2d(0.5, 2, generator=torch.Generator().manual_seed(1))
        >>> (m(torch.ones(1, 1, 4, 4))[0, 0] == 0).int()
        tensor([[0, 1, 1, 0],
                [0, 1, 1, 0],
                [0, 1, 1, 0],
                [0, 0, 0, 0]], dtype=torch.int32)
    """

    def __init__(
        self,
        p: float,
        block_size: int,
        *,
        exact_rate: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        p = check_p(p)
        if isinstance(block_size, bool) or not isinstance(block_size, int):
            raise TypeError(f"block_size must be an int, got {type(block_size).__name__}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.p = p
        self.block_size = block_size
        self.exact_rate = bool(exact_rate)
        self.generator = check_generator(generator)

    def extra_repr(self) -> str:
        """``p``, ``block_size`` and a non-default ``exact_rate``."""
        text = f"p={self.p}, block_size={self.block_size}"
        return text + ("" if self.exact_rate else ", exact_rate=False")

    def forward(self, input: Tensor) -> Tensor:
        """Drop squares in training mode."""
        return F.drop_block2d(
            input,
            self.p,
            self.block_size,
            self.training,
            exact_rate=self.exact_rate,
            generator=self.generator,
        )
