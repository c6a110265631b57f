r"""Functional forms of the dropout family (``traintech.dropout.functional``).

Where torch has the function (``dropout``, ``dropout1d/2d/3d``, ``alpha_dropout``,
``feature_alpha_dropout``) the positional signature is torch's, ``training`` defaults to
``True`` (torch's ``alpha_dropout`` and ``feature_alpha_dropout`` default to ``False``, which
makes ``F.alpha_dropout(x, 0.5)`` a silent no-op; ours applies it), and ``mode``,
``generator`` and ``low_memory`` are extra keywords. The functions torch lacks
(``drop_connect``, ``drop_path``, ``drop_block2d``) take ``training`` as a required argument,
so forgetting it is a ``TypeError`` instead of a network trained without regularisation.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from traintech.dropout._block_rate import block_seed_rate
from traintech.dropout._checks import (
    check_generator,
    check_mode,
    check_p,
    check_training,
    keep_mask,
)
from traintech.dropout._kernel import mask_scale

#: :math:`\lambda\alpha` of SELU (Klambauer et al. 2017); dropped units are set to its negative.
SELU_ALPHA_LAMBDA = 1.7580993408473766

__all__ = [
    "alpha_dropout",
    "drop_block2d",
    "drop_connect",
    "drop_path",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "feature_alpha_dropout",
]


def _check_input(input: object) -> Tensor:
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if not (input.is_floating_point() or input.is_complex()):
        raise TypeError(f"input must be a floating-point tensor, got dtype {input.dtype}")
    return input


def _mul(input: Tensor, factor: Tensor | float, inplace: bool) -> Tensor:
    return input.mul_(factor) if inplace else input * factor


def dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    mode: str = "inverted",
    generator: torch.Generator | None = None,
    low_memory: bool = False,
) -> Tensor:
    r"""Zero each element with probability ``p`` (Srivastava et al. 2014).

    With a keep mask :math:`m_i \sim \mathrm{Bernoulli}(1-p)` drawn independently per element:

    .. math::
        \text{inverted:}\quad y = \begin{cases} x \odot m / (1-p) & \text{training} \\
                                                x & \text{eval} \end{cases}
        \qquad
        \text{original:}\quad y = \begin{cases} x \odot m & \text{training} \\
                                                (1-p)\, x & \text{eval} \end{cases}

    Both keep :math:`\mathbb{E}[y_\text{train}] = y_\text{eval}`; inverted dropout (torch's
    only variant) moves the scaling into training so inference is untouched. ``p = 1`` gives
    zeros like torch. Paper: https://jmlr.org/papers/v15/srivastava14a.html (also
    https://arxiv.org/abs/1207.0580).

    On CPU the mask is sampled bit-sliced from a stream seeded by one draw from ``generator``
    and stored with one bit per element (see ``traintech.dropout._kernel``); masks therefore
    differ from torch's for the same seed, as torch's already differ between CPU and CUDA.

    Args:
        input: tensor of any shape.
        p: probability of an element to be zeroed, in ``[0, 1]``.
        training: apply dropout if ``True`` (default, as torch).
        inplace: overwrite ``input``.
        mode: ``"inverted"`` (default, scale by :math:`1/(1-p)` in training) or
            ``"original"`` (no scaling in training, multiply by :math:`1-p` in eval).
        generator: source of randomness (default: torch's global generator).
        low_memory: save no mask for backward; regenerate it from the saved seed.

    Returns:
        The tensor with dropped elements zeroed and the kept ones scaled.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> dropout(torch.ones(6), 0.5, generator=g)
        tensor([0., 2., 0., 0., 0., 2.])
    """
    _check_input(input)
    p = check_p(p)
    mode = check_mode(mode)
    check_generator(generator)
    check_training(training)
    if not training:
        return _mul(input, 1.0 - p, inplace) if mode == "original" and p > 0 else input
    if p == 0.0 or input.numel() == 0:
        return input
    if p == 1.0:
        return _mul(input, 0.0, inplace)
    scale = 1.0 / (1.0 - p) if mode == "inverted" else 1.0
    return mask_scale(input, p, scale, generator, low_memory=low_memory, inplace=inplace)


def _feature_mask_shape(input: Tensor, batched: bool) -> tuple[int, ...]:
    lead = 2 if batched else 1
    return tuple(input.shape[:lead]) + (1,) * (input.dim() - lead)


def _feature_dropout(
    input: Tensor,
    p: float,
    training: bool,
    inplace: bool,
    mode: str,
    generator: torch.Generator | None,
    batched: bool,
) -> Tensor:
    p = check_p(p)
    mode = check_mode(mode)
    check_generator(generator)
    check_training(training)
    if not training:
        return _mul(input, 1.0 - p, inplace) if mode == "original" and p > 0 else input
    if p == 0.0 or input.numel() == 0:
        return input
    if p == 1.0:
        return _mul(input, 0.0, inplace)
    scale = 1.0 / (1.0 - p) if mode == "inverted" else 1.0
    keep = keep_mask(_feature_mask_shape(input, batched), p, input.device, generator)
    return _mul(input, keep.to(input.dtype) * scale, inplace)


def _check_rank(input: Tensor, name: str, ranks: tuple[int, int], what: str) -> None:
    if input.dim() not in ranks:
        raise ValueError(
            f"{name}: input must be {ranks[0]}-D (unbatched {what}) or {ranks[1]}-D "
            f"(batched N, {what}); got input of shape {tuple(input.shape)}"
        )


def dropout1d(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    mode: str = "inverted",
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Zero whole channels of a ``(N, C, L)`` or ``(C, L)`` input (Tompson et al. 2015).

    .. math::
        y_{n,c,l} = x_{n,c,l}\, m_{n,c} / (1-p), \qquad m_{n,c} \sim \mathrm{Bernoulli}(1-p)

    (``mode="original"``: no :math:`1/(1-p)`, and :math:`(1-p)x` in eval). One mask entry per
    channel, shared over positions: neighbouring activations are correlated, so element-wise
    dropout hardly regularises conv features. Paper: https://arxiv.org/abs/1411.4280.

    Args:
        input: ``(N, C, L)`` or unbatched ``(C, L)``.
        p: probability of a channel to be zeroed, in ``[0, 1]``.
        training: apply dropout if ``True`` (default).
        inplace: overwrite ``input``.
        mode: ``"inverted"`` (default) or ``"original"``.
        generator: source of randomness (default: torch's global generator).

    Returns:
        The tensor with dropped channels zeroed and the kept ones scaled.

    Raises:
        ValueError: if ``input`` is not 2-D or 3-D.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> dropout1d(torch.ones(1, 4, 2), 0.5, generator=g)[0]
        tensor([[0., 0.],
                [2., 2.],
                [0., 0.],
                [0., 0.]])
    """
    _check_input(input)
    _check_rank(input, "dropout1d", (2, 3), "C, L")
    return _feature_dropout(input, p, training, inplace, mode, generator, input.dim() == 3)


def dropout2d(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    mode: str = "inverted",
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Zero whole channels of a ``(N, C, H, W)`` input (Tompson et al. 2015).

    .. math::
        y_{n,c,h,w} = x_{n,c,h,w}\, m_{n,c} / (1-p), \qquad m_{n,c} \sim \mathrm{Bernoulli}(1-p)

    Like torch 2.13, a 3-D input is read as batched ``(N, C, L)`` with a ``UserWarning``
    (torch plans to read it as unbatched ``(C, H, W)``; use :func:`dropout1d` for
    ``(N, C, L)``). Other ranks raise ``ValueError`` (torch only warns).
    Paper: https://arxiv.org/abs/1411.4280.

    Args:
        input: ``(N, C, H, W)``, or ``(N, C, L)`` with a warning.
        p: probability of a channel to be zeroed, in ``[0, 1]``.
        training: apply dropout if ``True`` (default).
        inplace: overwrite ``input``.
        mode: ``"inverted"`` (default) or ``"original"``.
        generator: source of randomness (default: torch's global generator).

    Returns:
        The tensor with dropped channels zeroed and the kept ones scaled.

    Raises:
        ValueError: if ``input`` is not 3-D or 4-D.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> dropout2d(torch.ones(1, 4, 1, 1), 0.5, generator=g).flatten()
        tensor([0., 2., 0., 0.])
    """
    _check_input(input)
    _check_rank(input, "dropout2d", (3, 4), "C, H, W")
    if input.dim() == 3:
        warnings.warn(
            "dropout2d: received a 3-D input; like torch it is read as batched (N, C, L) "
            "(channel-wise 1-D dropout). Use dropout1d / Dropout1d for (N, C, L) inputs.",
            UserWarning,
            stacklevel=2,
        )
    return _feature_dropout(input, p, training, inplace, mode, generator, True)


def dropout3d(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    mode: str = "inverted",
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Zero whole channels of a ``(N, C, D, H, W)`` or ``(C, D, H, W)`` input.

    .. math::
        y_{n,c,d,h,w} = x_{n,c,d,h,w}\, m_{n,c} / (1-p),
        \qquad m_{n,c} \sim \mathrm{Bernoulli}(1-p)

    Paper: https://arxiv.org/abs/1411.4280.

    Args:
        input: ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)``.
        p: probability of a channel to be zeroed, in ``[0, 1]``.
        training: apply dropout if ``True`` (default).
        inplace: overwrite ``input``.
        mode: ``"inverted"`` (default) or ``"original"``.
        generator: source of randomness (default: torch's global generator).

    Returns:
        The tensor with dropped channels zeroed and the kept ones scaled.

    Raises:
        ValueError: if ``input`` is not 4-D or 5-D.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> dropout3d(torch.ones(4, 1, 1, 1), 0.5, generator=g).flatten()
        tensor([0., 2., 0., 0.])
    """
    _check_input(input)
    _check_rank(input, "dropout3d", (4, 5), "C, D, H, W")
    return _feature_dropout(input, p, training, inplace, mode, generator, input.dim() == 5)


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
    mask_shape: tuple[int, ...],
) -> Tensor:
    p = check_p(p, allow_one=False)
    check_generator(generator)
    check_training(training)
    if not training or p == 0.0 or input.numel() == 0:
        return input
    keep = keep_mask(mask_shape, p, input.device, generator)
    return apply_alpha(input, keep, p, inplace)


def alpha_dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
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
        training: apply dropout if ``True`` (default; torch's default ``False`` is a no-op).
        inplace: overwrite ``input``.
        generator: source of randomness (default: torch's global generator).

    Returns:
        The alpha-dropped tensor.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> alpha_dropout(torch.zeros(4), 0.5, generator=g)
        tensor([-0.7792,  0.7792, -0.7792, -0.7792])
    """
    _check_input(input)
    return _alpha(input, p, training, inplace, generator, tuple(input.shape))


def feature_alpha_dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
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
        training: apply dropout if ``True`` (default; torch's default ``False`` is a no-op).
        inplace: overwrite ``input``.
        generator: source of randomness (default: torch's global generator).

    Returns:
        The alpha-dropped tensor.

    Raises:
        ValueError: if ``input`` has fewer than 2 dimensions.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> feature_alpha_dropout(torch.zeros(1, 2, 2), 0.5, generator=g)[0]
        tensor([[-0.7792, -0.7792],
                [ 0.7792,  0.7792]])
    """
    _check_input(input)
    if input.dim() < 2:
        raise ValueError(
            f"feature_alpha_dropout: input must have at least 2 dimensions (N, C, *); got "
            f"input of shape {tuple(input.shape)}"
        )
    return _alpha(input, p, training, inplace, generator, _feature_mask_shape(input, True))


def drop_connect(
    weight: Tensor,
    p: float,
    training: bool,
    *,
    mode: str = "inverted",
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""The weight a DropConnect layer uses (Wan et al. 2013): each weight dropped with prob ``p``.

    .. math::
        \tilde W = \begin{cases} W \odot M / (1-p) & \text{training} \\
                                 W & \text{eval} \end{cases}, \qquad
        M_{ij} \sim \mathrm{Bernoulli}(1-p)

    (``mode="original"``: :math:`W \odot M` in training and :math:`(1-p)W` in eval, the
    mean-field inference of the paper). One mask per call, shared by the whole batch.
    Paper: https://proceedings.mlr.press/v28/wan13.html.

    Args:
        weight: the weight tensor.
        p: probability of a weight to be dropped, in ``[0, 1]``.
        training: apply DropConnect if ``True`` (required: no silent default).
        mode: ``"inverted"`` (default) or ``"original"``.
        generator: source of randomness (default: torch's global generator).

    Returns:
        The masked, scaled weight (differentiable with respect to ``weight``).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> drop_connect(torch.ones(2, 3), 0.5, True, generator=g)
        tensor([[0., 2., 0.],
                [0., 0., 2.]])
    """
    check_training(training)
    return dropout(weight, p, training, mode=mode, generator=generator)


def drop_path(
    x: Tensor,
    p: float,
    training: bool,
    scale_by_keep: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Stochastic depth (Huang et al. 2016): drop whole samples of a residual branch.

    .. math::
        y_{b,\ldots} = x_{b,\ldots}\, m_b / (1-p), \qquad m_b \sim \mathrm{Bernoulli}(1-p)

    (no :math:`1/(1-p)` when ``scale_by_keep=False``); the mask has shape ``(B, 1, ..., 1)``.
    Use as ``x + drop_path(branch(x), p, self.training)``: a dropped sample skips the branch.
    Unlike timm's ``drop_path(x, p)``, ``training`` is required, so it cannot be a silent
    no-op. Paper: https://arxiv.org/abs/1603.09382.

    Args:
        x: the branch output, batch first, at least 1-D.
        p: probability of a sample's branch to be dropped, in ``[0, 1]``.
        training: apply it if ``True`` (required).
        scale_by_keep: divide kept samples by :math:`1-p` (keeps the expectation).
        generator: source of randomness (default: torch's global generator).

    Returns:
        The branch output with dropped samples zeroed.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> drop_path(torch.ones(4, 2), 0.5, True, generator=g)
        tensor([[0., 0.],
                [2., 2.],
                [0., 0.],
                [0., 0.]])
    """
    _check_input(x)
    p = check_p(p)
    check_training(training)
    check_generator(generator)
    if x.dim() < 1:
        raise ValueError("drop_path: x must have a batch dimension; got a 0-dim tensor")
    if not training or p == 0.0 or x.numel() == 0:
        return x
    if p == 1.0:
        return x * 0.0
    keep = keep_mask((x.shape[0],) + (1,) * (x.dim() - 1), p, x.device, generator)
    scale = 1.0 / (1.0 - p) if scale_by_keep else 1.0
    return x * (keep.to(x.dtype) * scale)


def drop_block2d(
    input: Tensor,
    p: float,
    block_size: int,
    training: bool,
    *,
    exact_rate: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""DropBlock (Ghiasi et al. 2018): drop ``block_size`` x ``block_size`` squares, rescale.

    Block corners are sampled with rate :math:`\gamma` over the :math:`(H-s+1)(W-s+1)` corners
    whose block fits inside the map (:math:`s` = ``block_size``), per sample and channel, and
    each seed zeroes its square. The paper's rate

    .. math::
        \gamma_\text{paper} = \frac{p}{s^2}\,\frac{HW}{(H-s+1)(W-s+1)}

    counts overlapping squares twice, so the dropped fraction falls below ``p`` (e.g. 0.181
    for p=0.2, s=3 on 16x16). With ``exact_rate=True`` (default) :math:`\gamma` instead solves

    .. math::
        \frac{1}{HW}\sum_{h,w}\Big(1-(1-\gamma)^{n_{hw}}\Big) = p,

    :math:`n_{hw}` being the number of valid squares covering :math:`(h, w)`, so the expected
    dropped fraction is exactly ``p``. Kept units are scaled by
    :math:`\mathrm{numel}(M) / \mathrm{sum}(M)` over the whole tensor.
    Paper: https://arxiv.org/abs/1810.12890.

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``.
        p: expected fraction of dropped units, in ``[0, 1]``.
        block_size: side of the dropped squares, ``1 <= block_size <= min(H, W)``.
        training: apply it if ``True`` (required).
        exact_rate: solve for :math:`\gamma` (default) instead of the paper's formula.
        generator: source of randomness (default: torch's global generator).

    Returns:
        The tensor with dropped squares zeroed and the rest rescaled.

    Raises:
        ValueError: if ``input`` is not 3-D/4-D or ``block_size`` does not fit.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> drop_block2d(torch.ones(1, 1, 4, 4), 0.25, 2, True, generator=g)[0, 0]
        tensor([[1.3333, 1.3333, 0.0000, 0.0000],
                [1.3333, 1.3333, 0.0000, 0.0000],
                [1.3333, 1.3333, 1.3333, 1.3333],
                [1.3333, 1.3333, 1.3333, 1.3333]])
    """
    _check_input(input)
    p = check_p(p)
    check_training(training)
    check_generator(generator)
    if input.dim() not in (3, 4):
        raise ValueError(
            f"drop_block2d: input must be 4-D (N, C, H, W) or 3-D (C, H, W); got input of "
            f"shape {tuple(input.shape)}"
        )
    height, width = input.shape[-2:]
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(f"block_size must be an int, got {type(block_size).__name__}")
    if block_size < 1 or block_size > min(height, width):
        raise ValueError(
            f"block_size must be in [1, min(H, W)] = [1, {min(height, width)}] for input of "
            f"shape {tuple(input.shape)}, got {block_size}"
        )
    if not training or p == 0.0 or input.numel() == 0:
        return input
    gamma = block_seed_rate(p, block_size, height, width, exact=exact_rate)
    seeds_shape = (*input.shape[:-2], height - block_size + 1, width - block_size + 1)
    seeds = (~keep_mask(seeds_shape, gamma, input.device, generator)).to(torch.float32)
    seeds = seeds.reshape(-1, 1, *seeds_shape[-2:])
    pad = block_size - 1
    padded = torch.nn.functional.pad(seeds, (pad, pad, pad, pad))
    dropped = torch.nn.functional.max_pool2d(padded, block_size, stride=1)
    keep = (1.0 - dropped).reshape(input.shape)
    scale = keep.numel() / keep.sum().clamp_min(1.0)
    return input * (keep * scale).to(input.dtype)
