"""``DropPath`` (stochastic depth) and the per-block rate schedule ``drop_path_rates``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from traintech._checks import check_generator
from traintech.dropout import functional as F
from traintech.dropout._checks import check_p


class DropPath(nn.Module):
    r"""Stochastic depth (Huang et al. 2016): drop a residual branch for whole samples.

    .. math::
        y_{b,\ldots} = x_{b,\ldots}\, m_b / (1-p), \qquad m_b \sim \mathrm{Bernoulli}(1-p)

    Put it on the branch, ``x + drop_path(block(x))``: a dropped sample skips ``block``, so
    the network it sees is shallower. Dividing by :math:`1-p` (``scale_by_keep``, timm's
    default) keeps the expectation, so eval is the identity. Per sample, not per batch
    (torchvision's ``StochasticDepth(mode="row")``). Paper: https://arxiv.org/abs/1603.09382.

    Args:
        p: probability of dropping the branch of a sample, in ``[0, 1]``. Default: 0.0.
        scale_by_keep: divide kept samples by :math:`1-p`. Default: ``True``.
        generator: source of randomness (default: torch's global generator).

    Example:
        >>> m = DropPath(0.5, generator=torch.Generator().manual_seed(0))
        >>> m(torch.ones(4, 2))
        tensor([[0., 0.],
                [0., 0.],
                [2., 2.],
                [0., 0.]])
    """

    def __init__(
        self,
        p: float = 0.0,
        scale_by_keep: bool = True,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.p = check_p(p)
        self.scale_by_keep = bool(scale_by_keep)
        self.generator = check_generator(generator)

    def extra_repr(self) -> str:
        """``p`` and ``scale_by_keep``."""
        return f"p={self.p}, scale_by_keep={self.scale_by_keep}"

    def forward(self, x: Tensor) -> Tensor:
        """Drop whole samples in training mode."""
        return F.drop_path(x, self.p, self.training, self.scale_by_keep, self.generator)


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
    r"""The usual per-block stochastic-depth rates: linear from 0 to ``max_rate``.

    .. math::
        p_l = p_\text{max}\,\frac{l}{L-1}, \qquad l = 0, \ldots, L-1

    (``torch.linspace(0, max_rate, depth)``, as timm and the ViT/ConvNeXt/Swin recipes; the
    first block is never dropped, the last with ``max_rate``; ``depth=1`` gives ``[0.0]``).
    Huang et al. 2016 (https://arxiv.org/abs/1603.09382) found the linear decay of survival
    probability with depth better than a uniform rate. Typical ``max_rate``: 0.1 (ResNet-50,
    ViT-S), 0.2-0.4 (ViT-B/L, ConvNeXt-B/L).

    Args:
        max_rate: rate of the last block, in ``[0, 1]``.
        depth: number of blocks, at least 1.

    Returns:
        ``depth`` floats.

    Example:
        >>> [round(r, 3) for r in drop_path_rates(0.3, 4)]
        [0.0, 0.1, 0.2, 0.3]
    """
    max_rate = check_p(max_rate, "max_rate")
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise TypeError(f"depth must be an int, got {type(depth).__name__}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if depth == 1:
        return [0.0]
    return [max_rate * i / (depth - 1) for i in range(depth)]
