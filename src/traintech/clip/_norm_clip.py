"""NormClip: the stateful form of global-norm clipping."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from traintech._checks import check_nonneg, check_norm_type
from traintech._constants import NORM_EPS
from traintech.clip._functional import clip_coefficient
from traintech.clip._protocol import Clipper, ClipResult
from traintech.clip._thresholds import refuse_zero_threshold

_ZERO_FIX = "pass max_norm > 0 (e.g. 1.0), or no clipper to train without clipping"


class NormClip(Clipper):
    r"""Clip the total gradient norm to ``max_norm`` (the clipper form of :func:`clip_grad_norm_`).

    .. math::
        g \leftarrow g \cdot \min\Big(1, \frac{\tau}{\|g\|_p + 10^{-6}}\Big)

    The direction of the gradient is kept; only its length is capped at :math:`\tau`. Pascanu,
    Mikolov & Bengio (2013), https://arxiv.org/abs/1211.5063.

    Typical ``max_norm``: 1.0 for Transformers / LLM pre-training, 0.25-5 for RNNs/LSTMs, 10-ish
    for small CNNs where it only guards against rare spikes.

    Args:
        max_norm: the bound :math:`\tau` (>= 0; ``inf`` disables clipping but still measures).
        norm_type: ``p`` of the p-norm, in ``(0, inf]``.

    Raises:
        ValueError: if ``max_norm`` is negative or NaN, or ``norm_type`` <= 0 or NaN.
        TypeError: if ``max_norm`` or ``norm_type`` is not a real number.

    Example:
        >>> w = torch.zeros(2, requires_grad=True)
        >>> w.grad = torch.tensor([3.0, 4.0])
        >>> result = NormClip(max_norm=1.0)([w])
        >>> result.norm, w.grad
        (tensor(5.), tensor([0.6000, 0.8000]))
    """

    stateful = False

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        self.max_norm = check_nonneg(max_norm, "max_norm")
        refuse_zero_threshold(self.max_norm, "max_norm", "NormClip", _ZERO_FIX)
        self.norm_type = check_norm_type(norm_type)

    def __repr__(self) -> str:
        return f"NormClip(max_norm={self.max_norm}, norm_type={self.norm_type})"

    def decide(self, norm: Tensor) -> ClipResult:
        """Coefficient ``min(1, max_norm / (norm + 1e-6))``; never asks to skip."""
        return ClipResult(
            norm=norm,
            coef=clip_coefficient(norm, self.max_norm, NORM_EPS),
            threshold=torch.full((), self.max_norm, dtype=norm.dtype, device=norm.device),
            skip=torch.zeros((), dtype=torch.bool, device=norm.device),
        )

    def state_dict(self) -> dict[str, Any]:
        """Settings: ``max_norm``, ``norm_type`` and ``_version``."""
        return {"_version": self._version, "max_norm": self.max_norm, "norm_type": self.norm_type}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the settings saved by :meth:`state_dict`."""
        super().load_state_dict(state_dict)
        self.max_norm = check_nonneg(state_dict["max_norm"], "max_norm")
        self.norm_type = check_norm_type(state_dict["norm_type"])
