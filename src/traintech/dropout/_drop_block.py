"""``DropBlock2d`` and ``drop_block2d``: drop contiguous square regions of feature maps."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.overrides import handle_torch_function, has_torch_function_unary

from traintech._checks import check_bool, check_generator
from traintech.dropout._block_rate import block_seed_rate
from traintech.dropout._checks import check_input, check_p, draw_generator, keep_like


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
        >>> g = torch.Generator().manual_seed(3)
        >>> drop_block2d(torch.ones(1, 1, 4, 4), 0.25, 2, True, generator=g)[0, 0]
        tensor([[0.0000, 0.0000, 1.3333, 1.3333],
                [0.0000, 0.0000, 1.3333, 1.3333],
                [1.3333, 1.3333, 1.3333, 1.3333],
                [1.3333, 1.3333, 1.3333, 1.3333]])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(
            drop_block2d,
            (input,),
            input,
            p,
            block_size,
            training,
            exact_rate=exact_rate,
            generator=generator,
        )
    check_input(input)
    p = check_p(p)
    check_bool(training, "training")
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
    # block seeds ~ Bernoulli(gamma), made from input so they follow DTensor, vmap, tracing
    seeds = keep_like(input, seeds_shape, 1.0 - gamma, draw_generator(generator)).float()
    seeds = seeds.reshape(-1, 1, *seeds_shape[-2:])
    pad = block_size - 1
    padded = torch.nn.functional.pad(seeds, (pad, pad, pad, pad))
    dropped = torch.nn.functional.max_pool2d(padded, block_size, stride=1)
    keep = (1.0 - dropped).reshape(input.shape)
    scale = keep.numel() / keep.sum().clamp_min(1.0)
    return input * (keep * scale).to(input.dtype)


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
        tensor([[1, 1, 1, 1],
                [1, 1, 1, 1],
                [1, 1, 1, 1],
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
        return drop_block2d(
            input,
            self.p,
            self.block_size,
            self.training,
            exact_rate=self.exact_rate,
            generator=self.generator,
        )
