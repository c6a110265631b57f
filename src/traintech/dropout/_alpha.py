"""``AlphaDropout``, ``FeatureAlphaDropout`` and their functional forms (SELU networks)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.overrides import handle_torch_function, has_torch_function_unary

from traintech._checks import check_bool, check_generator
from traintech.dropout._checks import (
    check_input,
    check_p,
    draw_generator,
    feature_mask_shape,
    keep_like,
)

#: :math:`\lambda\alpha` of SELU (Klambauer et al. 2017); dropped units are set to its negative.
SELU_ALPHA_LAMBDA = 1.7580993408473766


def alpha_affine(p: float) -> tuple[float, float, float]:
    r"""The constants of alpha dropout: dropped value :math:`\alpha'`, :math:`a`, :math:`b`."""
    alpha_p = -SELU_ALPHA_LAMBDA
    a = 1.0 / math.sqrt((1.0 - p) * (1.0 + p * alpha_p**2))
    return alpha_p, a, -a * p * alpha_p


def apply_alpha(input: Tensor, keep: Tensor, p: float, inplace: bool = False) -> Tensor:
    """Alpha dropout of ``input`` with the given keep mask (broadcastable to ``input``)."""
    alpha_p, a, b = alpha_affine(p)
    keep_f = keep.to(input.dtype)
    shift = (1.0 - keep_f) * (a * alpha_p) + b
    if inplace:
        return input.mul_(keep_f * a).add_(shift)
    return input * (keep_f * a) + shift


def _alpha(
    input: Tensor,
    p: float,
    training: bool,
    inplace: bool,
    generator: torch.Generator | None,
    feature: bool,
) -> Tensor:
    p = check_p(p, allow_one=False)
    check_generator(generator)
    check_bool(training, "training")
    if not training or p == 0.0 or input.numel() == 0:
        return input
    if generator is None:  # torch's own op
        nnf = torch.nn.functional
        op = nnf.feature_alpha_dropout if feature else nnf.alpha_dropout
        return op(input, p, True, inplace)
    shape = feature_mask_shape(input, True) if feature else tuple(input.shape)
    keep = keep_like(input, shape, p, draw_generator(generator))
    return apply_alpha(input, keep, p, inplace)


def alpha_dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = False,
    inplace: bool = False,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Alpha dropout for SELU networks (Klambauer et al. 2017): keeps mean 0 and variance 1.

    Dropped units are set to SELU's negative saturation :math:`\alpha' = -\lambda\alpha`, then
    an affine map restores the moments of a zero-mean, unit-variance input:

    .. math::
        y = a\,\big(x \odot m + \alpha' (1 - m)\big) + b, \quad
        a = \big((1-p)(1 + p\,\alpha'^2)\big)^{-1/2}, \quad b = -a\,p\,\alpha'

    with :math:`m \sim \mathrm{Bernoulli}(1-p)`; the same formula as
    ``torch.nn.functional.alpha_dropout``. ``p = 1`` is rejected (:math:`a` is infinite).
    Paper: https://arxiv.org/abs/1706.02515.

    Args:
        input: tensor of any shape.
        p: probability of an element to be dropped, in ``[0, 1)``.
        training: apply dropout if ``True``; the default ``False`` (torch's) is a no-op.
        inplace: overwrite ``input``.
        generator: source of randomness (default: torch's global generator).

    Returns:
        The alpha-dropped tensor.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> alpha_dropout(torch.zeros(4), 0.5, True, generator=g)
        tensor([-0.7792, -0.7792,  0.7792, -0.7792])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(
            alpha_dropout, (input,), input, p, training, inplace, generator=generator
        )
    check_input(input)
    return _alpha(input, p, training, inplace, generator, False)


def feature_alpha_dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = False,
    inplace: bool = False,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Alpha dropout of whole channels of an ``(N, C, *)`` input (as torch's namesake).

    .. math::
        y_{n,c,\ldots} = a\,\big(x_{n,c,\ldots}\, m_{n,c} + \alpha'(1 - m_{n,c})\big) + b

    with :math:`\alpha', a, b` as in :func:`alpha_dropout`. Paper: https://arxiv.org/abs/1706.02515.

    Args:
        input: ``(N, C, *)`` tensor with at least 2 dimensions.
        p: probability of a channel to be dropped, in ``[0, 1)``.
        training: apply dropout if ``True``; the default ``False`` (torch's) is a no-op.
        inplace: overwrite ``input``.
        generator: source of randomness (default: torch's global generator).

    Returns:
        The alpha-dropped tensor.

    Raises:
        ValueError: if ``training`` and ``input`` has fewer than 2 dimensions (as torch,
            which returns a 0-D/1-D input unchanged when not training).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> feature_alpha_dropout(torch.zeros(1, 2, 2), 0.5, True, generator=g)[0]
        tensor([[-0.7792, -0.7792],
                [-0.7792, -0.7792]])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(
            feature_alpha_dropout, (input,), input, p, training, inplace, generator=generator
        )
    check_input(input)
    if training is True and input.dim() < 2:  # as torch: only checked when it would drop
        raise ValueError(
            f"feature_alpha_dropout: input must have at least 2 dimensions (N, C, *); got "
            f"input of shape {tuple(input.shape)}"
        )
    return _alpha(input, p, training, inplace, generator, True)


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
        inplace: accepted and stored but ignored, as by torch's ``nn.AlphaDropout`` (its
            forward never passes it on): the input is never overwritten. The functional
            :func:`alpha_dropout` honours ``inplace``, as torch's does.
        generator: source of randomness (default: torch's global generator).

    Example:
        >>> m = AlphaDropout(0.5, generator=torch.Generator().manual_seed(0))
        >>> m(torch.zeros(4))
        tensor([-0.7792, -0.7792,  0.7792, -0.7792])
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
        # torch's nn.AlphaDropout ignores self.inplace; so does this drop-in
        return alpha_dropout(input, self.p, self.training, False, generator=self.generator)


class FeatureAlphaDropout(nn.FeatureAlphaDropout):
    r"""Alpha dropout of whole channels; drop-in for ``nn.FeatureAlphaDropout``.

    .. math::
        y_{n,c,\ldots} = a\,\big(x_{n,c,\ldots}\, m_{n,c} + \alpha'(1 - m_{n,c})\big) + b

    with :math:`\alpha', a, b` as in :class:`AlphaDropout`. Paper: https://arxiv.org/abs/1706.02515.

    Args:
        p: probability of a channel to be dropped, in ``[0, 1)``. Default: 0.5.
        inplace: accepted and stored but ignored, as by torch's ``nn.FeatureAlphaDropout``.
        generator: source of randomness (default: torch's global generator).

    Example:
        >>> m = FeatureAlphaDropout(0.5, generator=torch.Generator().manual_seed(0))
        >>> m(torch.zeros(1, 2, 2))[0]
        tensor([[-0.7792, -0.7792],
                [-0.7792, -0.7792]])
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
        # torch's nn.FeatureAlphaDropout ignores self.inplace; so does this drop-in
        return feature_alpha_dropout(input, self.p, self.training, False, generator=self.generator)
