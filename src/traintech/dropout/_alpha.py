"""``AlphaDropout`` and ``FeatureAlphaDropout``: dropout that keeps SELU's fixed point."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from traintech.dropout import functional as F
from traintech.dropout._checks import check_generator, check_p


class AlphaDropout(nn.AlphaDropout):
    r"""Alpha dropout (Klambauer et al. 2017); drop-in for ``nn.AlphaDropout`` with a generator.

    .. math::
        y = a\,\big(x \odot m + \alpha' (1 - m)\big) + b, \quad
        a = \big((1-p)(1 + p\,\alpha'^2)\big)^{-1/2}, \quad b = -a\,p\,\alpha', \quad
        \alpha' = -\lambda\alpha \approx -1.7581

    For zero-mean, unit-variance inputs (a SELU network at its fixed point) the output keeps
    mean 0 and variance 1. ``p = 1`` is rejected: :math:`a` is infinite.
    Paper: https://arxiv.org/abs/1706.02515.

    Args:
        p: probability of an element to be dropped, in ``[0, 1)``. Default: 0.5.
        inplace: overwrite the input (torch's module ignores it; ours honours it).
        generator: source of randomness (default: torch's global generator).

    Example:
        >>> m = AlphaDropout(0.5, generator=torch.Generator().manual_seed(0))
        >>> m(torch.zeros(4))
        tensor([-0.7792,  0.7792, -0.7792, -0.7792])
    """

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(check_p(p, allow_one=False), inplace)
        self.generator = check_generator(generator)

    def forward(self, input: Tensor) -> Tensor:
        """Apply alpha dropout in training mode."""
        return F.alpha_dropout(
            input, self.p, self.training, self.inplace, generator=self.generator
        )


class FeatureAlphaDropout(nn.FeatureAlphaDropout):
    r"""Alpha dropout of whole channels; drop-in for ``nn.FeatureAlphaDropout``.

    .. math::
        y_{n,c,\ldots} = a\,\big(x_{n,c,\ldots}\, m_{n,c} + \alpha'(1 - m_{n,c})\big) + b

    with :math:`\alpha', a, b` as in :class:`AlphaDropout`. Paper: https://arxiv.org/abs/1706.02515.

    Args:
        p: probability of a channel to be dropped, in ``[0, 1)``. Default: 0.5.
        inplace: overwrite the input.
        generator: source of randomness (default: torch's global generator).

    Example:
        >>> m = FeatureAlphaDropout(0.5, generator=torch.Generator().manual_seed(0))
        >>> m(torch.zeros(1, 2, 2))[0]
        tensor([[-0.7792, -0.7792],
                [ 0.7792,  0.7792]])
    """

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(check_p(p, allow_one=False), inplace)
        self.generator = check_generator(generator)

    def forward(self, input: Tensor) -> Tensor:
        """Apply channel-wise alpha dropout in training mode."""
        return F.feature_alpha_dropout(
            input, self.p, self.training, self.inplace, generator=self.generator
        )
