"""ValueClip: the stateful form of element-wise value clipping."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from traintech._checks import check_nonneg
from traintech.clip._functional import clamp_grads_
from traintech.clip._norm import ParamsLike, collect_grads
from traintech.clip._protocol import Clipper, ClipResult
from traintech.clip._thresholds import refuse_zero_threshold

_ZERO_FIX = "pass clip_value > 0 (e.g. 1.0), or no clipper to train without clipping"


class ValueClip(Clipper):
    r"""Clamp every gradient entry to ``[-clip_value, clip_value]``.

    .. math::
        g_{ij} \leftarrow \max(-c, \min(c, g_{ij}))

    Unlike :class:`NormClip` this is not a uniform rescaling: clamped entries shrink while the
    others keep their value, so the gradient's direction changes. ``result.norm`` is the 2-norm
    before clamping and ``result.coef`` the ratio of the 2-norms after and before the clamp,
    :math:`\|\mathrm{clamp}(g)\| / \|g\|` (1.0 when nothing was clamped, as for the other
    clippers; no single factor describes a clamp, so this one summarises it);
    ``result.threshold`` is ``clip_value``. In a guarded step (measure, decide, apply) ``coef``
    is reported as 1.0. Mikolov (2012, PhD thesis) clipped by value in RNN
    language models; see also Pascanu et al. (2013), https://arxiv.org/abs/1211.5063.

    Args:
        clip_value: the bound :math:`c` (>= 0).

    Raises:
        ValueError: if ``clip_value`` is negative or NaN.
        TypeError: if ``clip_value`` is not a real number.

    Example:
        >>> w = torch.zeros(3, requires_grad=True)
        >>> w.grad = torch.tensor([-2.0, 0.5, 3.0])
        >>> result = ValueClip(clip_value=1.0)([w])
        >>> w.grad
        tensor([-1.0000,  0.5000,  1.0000])
    """

    stateful = False

    def __init__(self, clip_value: float) -> None:
        self.clip_value = check_nonneg(clip_value, "clip_value")
        refuse_zero_threshold(self.clip_value, "clip_value", "ValueClip", _ZERO_FIX)

    def __repr__(self) -> str:
        return f"ValueClip(clip_value={self.clip_value})"

    @torch.no_grad()
    def __call__(self, parameters: ParamsLike) -> ClipResult:
        """Clamp the gradients in place; ``coef`` is the norm after over the norm before.

        Raises:
            ValueError: if no parameter in ``parameters`` has a gradient.
            TypeError: if an element of ``parameters`` is not a tensor.
        """
        grads = collect_grads(parameters)
        if not grads:
            raise ValueError(
                "parameters has no gradients: ValueClip needs at least one tensor with a .grad "
                "(call it after loss.backward(), with model.parameters())"
            )
        result = self.decide(self.measure(grads))
        self.apply(grads, result)
        norm = result.norm
        after = self.measure(grads).to(norm.dtype)
        coef = torch.where(norm > 0, after / norm, torch.ones_like(norm))
        return ClipResult(norm=norm, coef=coef, threshold=result.threshold, skip=result.skip)

    def decide(self, norm: Tensor) -> ClipResult:
        """Coefficient 1.0 (the clamp happens in :meth:`apply`); never asks to skip."""
        return ClipResult(
            norm=norm,
            coef=torch.ones((), dtype=norm.dtype, device=norm.device),
            threshold=torch.full((), self.clip_value, dtype=norm.dtype, device=norm.device),
            skip=torch.zeros((), dtype=torch.bool, device=norm.device),
        )

    def apply(self, grads: list[Tensor], result: ClipResult) -> None:
        """Clamp every gradient in place to ``[-clip_value, clip_value]``."""
        clamp_grads_(grads, self.clip_value)

    def state_dict(self) -> dict[str, Any]:
        """Settings: ``clip_value`` and ``_version``."""
        return {"_version": self._version, "clip_value": self.clip_value}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the settings saved by :meth:`state_dict`."""
        super().load_state_dict(state_dict)
        self.clip_value = check_nonneg(state_dict["clip_value"], "clip_value")
