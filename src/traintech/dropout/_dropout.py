"""``Dropout``: element-wise dropout, inverted (torch's) or original, with a low-memory mode."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from traintech._checks import check_generator
from traintech.dropout import functional as F
from traintech.dropout._checks import check_mode, check_p


class Dropout(nn.Dropout):
    r"""Drop-in for ``torch.nn.Dropout`` with a ``generator``, the original variant and less memory.

    .. math::
        \text{inverted:}\quad y = \begin{cases} x \odot m / (1-p) & \text{training} \\
                                                x & \text{eval} \end{cases}
        \qquad
        \text{original:}\quad y = \begin{cases} x \odot m & \text{training} \\
                                                (1-p)\, x & \text{eval} \end{cases}

    with :math:`m_i \sim \mathrm{Bernoulli}(1-p)`. Subclasses ``torch.nn.Dropout`` (same
    constructor arguments, ``extra_repr`` and empty state_dict), so ``isinstance`` checks for
    torch's class still match. On plain CPU tensors of at least ``2**17`` elements a bit-sliced
    kernel runs (faster than torch's, 1 bit per element saved for backward instead of a float
    mask; ``low_memory=True`` saves none, the mask is regenerated in backward); everywhere
    else (accelerators, DTensor, ``torch.func``, tracing, ``torch.compile``) torch's op runs.
    Under ``torch.utils.checkpoint`` a ``generator`` is replayed, so the recomputation sees
    the same mask. Srivastava et al. 2014,
    https://jmlr.org/papers/v15/srivastava14a.html (https://arxiv.org/abs/1207.0580).

    Args:
        p: probability of an element to be zeroed, in ``[0, 1]``. Default: 0.5.
        inplace: overwrite the input. Default: ``False``.
        mode: ``"inverted"`` (default) or ``"original"``.
        generator: source of randomness (default: torch's global generator).
        low_memory: save no mask for backward.

    Example:
        >>> m = Dropout(0.5, generator=torch.Generator().manual_seed(0))
        >>> m(torch.ones(6))
        tensor([0., 0., 2., 0., 0., 0.])
        >>> m.eval()(torch.ones(2))
        tensor([1., 1.])
    """

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        mode: str = "inverted",
        generator: torch.Generator | None = None,
        low_memory: bool = False,
    ) -> None:
        p = check_p(p)
        super().__init__(p, inplace)
        self.mode = check_mode(mode)
        self.generator = check_generator(generator)
        self.low_memory = bool(low_memory)

    def extra_repr(self) -> str:
        """``p`` and ``inplace`` as torch prints them, then the non-default options."""
        text = super().extra_repr()
        if self.mode != "inverted":
            text += f", mode={self.mode!r}"
        if self.low_memory:
            text += ", low_memory=True"
        return text

    def forward(self, input: Tensor) -> Tensor:
        """Apply dropout in training mode (see the class docstring)."""
        return F.dropout(
            input,
            self.p,
            self.training,
            self.inplace,
            mode=self.mode,
            generator=self.generator,
            low_memory=self.low_memory,
        )
