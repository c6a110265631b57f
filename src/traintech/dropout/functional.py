r"""Functional forms of the dropout family (``traintech.dropout.functional``).

Where torch has the function (``dropout``, ``dropout1d/2d/3d``, ``alpha_dropout``,
``feature_alpha_dropout``) the positional signature and defaults are torch's (so
``alpha_dropout`` and ``feature_alpha_dropout`` default to ``training=False``, a no-op, as
torch's do: a drop-in replacement changes nothing), and ``mode``, ``generator`` and
``low_memory`` are extra keywords. The functions torch lacks
(``drop_connect``, ``drop_path``, ``drop_block2d``) take ``training`` as a required argument,
so forgetting it is a ``TypeError`` instead of a network trained without regularisation.

Dispatch (which code runs where):

* ``dropout`` on a plain, dense, contiguous CPU tensor of at least
  ``traintech.dropout._kernel.FAST_MIN_NUMEL`` elements, eagerly: the bit-sliced kernel
  (custom op ``traintech::bit_dropout``).
* Everywhere else (CUDA/MPS/other accelerators, small tensors, DTensor, meta/fake tensors,
  ``torch.func`` transforms, forward-mode AD, FX/export tracing, ``torch.compile``): with
  ``generator=None`` and the inverted mode, torch's own op (``torch.nn.functional.dropout``,
  ``torch.feature_dropout``, ``alpha_dropout``, ``feature_alpha_dropout``); with a
  ``generator`` or ``mode="original"``, the mask is ``empty_like(input).bernoulli_(1 - p,
  generator=generator)`` and the output ``input * mask / (1 - p)`` (torch's formula).
* Every function accepts ``torch.fx`` proxies (``__torch_function__``), so
  ``torch.fx.symbolic_trace`` records it as one call.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_unary

from traintech._checks import check_bool, check_generator
from traintech.dropout._alpha import alpha_dropout, feature_alpha_dropout
from traintech.dropout._checks import (
    check_input,
    check_mode,
    check_p,
    draw_generator,
    feature_mask_shape,
    keep_like,
    mul,
)
from traintech.dropout._drop_block import drop_block2d
from traintech.dropout._kernel import fast_dropout, replay_dropout, use_fast_path

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

    On large plain CPU tensors the mask is sampled bit-sliced from a stream seeded by one draw
    from ``generator`` and stored with one bit per element (see ``traintech.dropout._kernel``);
    masks there differ from torch's for the same seed, as torch's already differ between CPU
    and CUDA. Elsewhere torch's op runs (see the module docstring).

    Args:
        input: tensor of any shape.
        p: probability of an element to be zeroed, in ``[0, 1]``.
        training: apply dropout if ``True`` (default, as torch).
        inplace: overwrite ``input``.
        mode: ``"inverted"`` (default, scale by :math:`1/(1-p)` in training) or
            ``"original"`` (no scaling in training, multiply by :math:`1-p` in eval).
        generator: source of randomness (default: torch's global generator).
        low_memory: save no mask for backward; regenerate it from the saved seed (fast
            path) or generator state (other eager tensors). Under transforms, tracing and
            ``torch.compile`` torch's op decides what is saved (a ``UserWarning`` says so
            outside ``torch.compile``).

    Returns:
        The tensor with dropped elements zeroed and the kept ones scaled.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> dropout(torch.ones(6), 0.5, generator=g)
        tensor([0., 0., 2., 0., 0., 0.])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(
            dropout,
            (input,),
            input,
            p,
            training,
            inplace,
            mode=mode,
            generator=generator,
            low_memory=low_memory,
        )
    check_input(input)
    p = check_p(p)
    mode = check_mode(mode)
    check_generator(generator)
    check_bool(training, "training")
    if not training:
        return mul(input, 1.0 - p, inplace) if mode == "original" and p > 0 else input
    if p == 0.0 or input.numel() == 0:
        return input
    if p == 1.0:
        return mul(input, 0.0, inplace)
    scale = 1.0 / (1.0 - p) if mode == "inverted" else 1.0
    if use_fast_path(input):
        gen = draw_generator(generator)
        return fast_dropout(input, p, scale, gen, low_memory=low_memory, inplace=inplace)
    if low_memory and not inplace and _plain_eager(input):
        return replay_dropout(input, p, scale, draw_generator(generator))
    if low_memory and not torch.compiler.is_compiling():
        warnings.warn(
            "dropout(low_memory=True): this input (a tensor subclass, a torch.func transform, "
            "forward-mode AD, tracing or inplace=True) runs torch's ops, which save their own "
            "mask for backward; low_memory has no effect here",
            UserWarning,
            stacklevel=2,
        )
    if generator is None and mode == "inverted":
        return torch.nn.functional.dropout(input, p, True, inplace)
    return _masked(input, input.shape, p, mode, draw_generator(generator), inplace)


def _plain_eager(input: Tensor) -> bool:
    # A plain tensor in eager autograd (no subclass, transform, dual, tracing or compile).
    from torch.autograd import forward_ad

    from traintech import _compat

    return (
        not torch.compiler.is_compiling()
        and type(input) is Tensor
        and not _compat.is_functorch_wrapped(input)
        and not _compat.tracing_or_mode_active()
        and forward_ad.unpack_dual(input).tangent is None
    )


def _masked(
    input: Tensor,
    shape: tuple[int, ...] | torch.Size,
    p: float,
    mode: str,
    generator: torch.Generator | None,
    inplace: bool,
) -> Tensor:
    # torch's formula: noise = bernoulli(1 - p) / (1 - p) in input's dtype; input * noise.
    noise = keep_like(input, shape, p, generator)
    if mode == "inverted":
        noise = noise.div_(1.0 - p)
    return mul(input, noise, inplace)


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
    check_bool(training, "training")
    if not training:
        return mul(input, 1.0 - p, inplace) if mode == "original" and p > 0 else input
    if p == 0.0 or input.numel() == 0:
        return input
    if p == 1.0:
        return mul(input, 0.0, inplace)
    if generator is None and mode == "inverted":  # torch's op (what F.dropout1d/2d/3d run)
        x = input if batched else input.unsqueeze(0)
        out = torch.feature_dropout_(x, p, True) if inplace else torch.feature_dropout(x, p, True)
        return input if inplace else (out if batched else out.squeeze(0))
    shape = feature_mask_shape(input, batched)
    return _masked(input, shape, p, mode, draw_generator(generator), inplace)


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
                [0., 0.],
                [2., 2.],
                [0., 0.]])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(
            dropout1d, (input,), input, p, training, inplace, mode=mode, generator=generator
        )
    check_input(input)
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
        tensor([0., 0., 2., 0.])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(
            dropout2d, (input,), input, p, training, inplace, mode=mode, generator=generator
        )
    check_input(input)
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
        tensor([0., 0., 2., 0.])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(
            dropout3d, (input,), input, p, training, inplace, mode=mode, generator=generator
        )
    check_input(input)
    _check_rank(input, "dropout3d", (4, 5), "C, D, H, W")
    return _feature_dropout(input, p, training, inplace, mode, generator, input.dim() == 5)


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
        tensor([[0., 0., 2.],
                [0., 0., 0.]])
    """
    if has_torch_function_unary(weight):
        return handle_torch_function(
            drop_connect, (weight,), weight, p, training, mode=mode, generator=generator
        )
    check_input(weight, "weight")
    check_bool(training, "training")
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
                [0., 0.],
                [2., 2.],
                [0., 0.]])
    """
    if has_torch_function_unary(x):
        return handle_torch_function(drop_path, (x,), x, p, training, scale_by_keep, generator)
    check_input(x, "x")
    p = check_p(p)
    check_bool(training, "training")
    check_generator(generator)
    if x.dim() < 1:
        raise ValueError("drop_path: x must have a batch dimension; got a 0-dim tensor")
    if not training or p == 0.0 or x.numel() == 0:
        return x
    if p == 1.0:
        return x * 0.0
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    mode = "inverted" if scale_by_keep else "original"
    return _masked(x, shape, p, mode, draw_generator(generator), False)
