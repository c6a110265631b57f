"""``Dropout1d/2d/3d``: spatial (channel-wise) dropout with a ``generator``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from traintech._checks import check_generator
from traintech.dropout import functional as F
from traintech.dropout._checks import check_mode, check_p


class _SpatialMixin:
    """Constructor, ``extra_repr`` and ``forward`` shared by the three spatial dropouts.

    Listed before the ``nn.DropoutNd`` base, so ``super()`` reaches torch's constructor and
    ``extra_repr``; each class names its functional twin in ``_functional``.
    """

    _functional: Callable[..., Tensor]
    p: float
    inplace: bool
    training: bool
    mode: str
    generator: torch.Generator | None

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        mode: str = "inverted",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(check_p(p), inplace)  # type: ignore[call-arg]
        self.mode = check_mode(mode)
        self.generator = check_generator(generator)

    def extra_repr(self) -> str:
        """``p`` and ``inplace`` as torch prints them, then a non-default ``mode``."""
        base: str = super().extra_repr()  # type: ignore[misc]
        return base + (f", mode={self.mode!r}" if self.mode != "inverted" else "")

    def forward(self, input: Tensor) -> Tensor:
        """Apply channel dropout in training mode."""
        return type(self)._functional(
            input, self.p, self.training, self.inplace, mode=self.mode, generator=self.generator
        )


class Dropout1d(_SpatialMixin, nn.Dropout1d):
    r"""Zero whole channels of ``(N, C, L)`` / ``(C, L)`` inputs; drop-in for ``nn.Dropout1d``.

    .. math::
        y_{n,c,l} = x_{n,c,l}\, m_{n,c} / (1-p), \qquad m_{n,c} \sim \mathrm{Bernoulli}(1-p)

    Tompson et al. 2015, https://arxiv.org/abs/1411.4280. Other ranks raise ``ValueError``.

    Args:
        p: probability of a channel to be zeroed, in ``[0, 1]``. Default: 0.5.
        inplace: overwrite the input. Default: ``False``.
        mode: ``"inverted"`` (default) or ``"original"``.
        generator: source of randomness (default: torch's global generator).

    Example:
        >>> m = Dropout1d(0.5, generator=torch.Generator().manual_seed(0))
        >>> m(torch.ones(4, 2))
        tensor([[0., 0.],
                [0., 0.],
                [2., 2.],
                [0., 0.]])
    """

    _functional = staticmethod(F.dropout1d)


class Dropout2d(_SpatialMixin, nn.Dropout2d):
    r"""Zero whole channels of ``(N, C, H, W)`` inputs; drop-in for ``nn.Dropout2d``.

    .. math::
        y_{n,c,h,w} = x_{n,c,h,w}\, m_{n,c} / (1-p), \qquad m_{n,c} \sim \mathrm{Bernoulli}(1-p)

    As torch 2.13, a 3-D input is read as ``(N, C, L)`` with a ``UserWarning``; other ranks
    raise ``ValueError``. Tompson et al. 2015, https://arxiv.org/abs/1411.4280.

    Args:
        p: probability of a channel to be zeroed, in ``[0, 1]``. Default: 0.5.
        inplace: overwrite the input. Default: ``False``.
        mode: ``"inverted"`` (default) or ``"original"``.
        generator: source of randomness (default: torch's global generator).

    Example:
        >>> m = Dropout2d(0.5, generator=torch.Generator().manual_seed(0))
        >>> m(torch.ones(1, 4, 1, 1)).flatten()
        tensor([0., 0., 2., 0.])
    """

    _functional = staticmethod(F.dropout2d)


class Dropout3d(_SpatialMixin, nn.Dropout3d):
    r"""Zero whole channels of ``(N, C, D, H, W)`` / ``(C, D, H, W)``; drop-in for ``nn.Dropout3d``.

    .. math::
        y_{n,c,d,h,w} = x_{n,c,d,h,w}\, m_{n,c} / (1-p),
        \qquad m_{n,c} \sim \mathrm{Bernoulli}(1-p)

    Tompson et al. 2015, https://arxiv.org/abs/1411.4280. Other ranks raise ``ValueError``.

    Args:
        p: probability of a channel to be zeroed, in ``[0, 1]``. Default: 0.5.
        inplace: overwrite the input. Default: ``False``.
        mode: ``"inverted"`` (default) or ``"original"``.
        generator: source of randomness (default: torch's global generator).

    Example:
        >>> m = Dropout3d(0.5, generator=torch.Generator().manual_seed(0))
        >>> m(torch.ones(4, 1, 1, 1)).flatten()
        tensor([0., 0., 2., 0.])
    """

    _functional = staticmethod(F.dropout3d)
