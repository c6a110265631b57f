"""The protocol every stateful clipper follows: measure, decide, apply.

Splitting the three steps lets the guarded optimizer step compute the norm once, check it for
NaN/Inf before any state changes, and fold the coefficient into a fused optimizer instead of
rewriting the gradients.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from traintech.clip._functional import scale_grads_
from traintech.clip._norm import ParamsLike, collect_grads, total_norm


@dataclass(frozen=True)
class ClipResult:
    """What a clipper did on one step.

    Attributes:
        norm: 0-dim tensor, the total gradient norm before clipping.
        coef: 0-dim tensor, the factor the gradients were (or are to be) multiplied by;
            1.0 means untouched.
        threshold: 0-dim tensor, the norm bound in force this step (``inf`` when none).
        skip: 0-dim bool tensor, True when the clipper's spike policy asks that the optimizer
            update of this step be skipped.
    """

    norm: Tensor
    coef: Tensor
    threshold: Tensor
    skip: Tensor


class Clipper(ABC):
    """Base class of the stateful clippers.

    Call it after ``loss.backward()`` and before ``optimizer.step()``::

        result = clipper(model.parameters())

    Subclasses implement :meth:`decide` (the rule, updating any state) and may override
    :meth:`measure` and :meth:`apply`.
    """

    #: Version of the ``state_dict`` layout; bumped when fields change.
    _version: int = 1

    norm_type: float = 2.0

    #: Whether :meth:`decide` updates statistics. The guarded step never calls ``decide`` on a
    #: non-finite norm; for a stateful clipper that check costs one host sync per step.
    stateful: bool = True

    @torch.no_grad()
    def __call__(self, parameters: ParamsLike) -> ClipResult:
        """Measure, decide and apply in one call; return what was done.

        Raises:
            ValueError: if no parameter in ``parameters`` has a gradient (nothing to measure).
            TypeError: if an element of ``parameters`` is not a tensor.
        """
        grads = collect_grads(parameters)
        if not grads:
            raise ValueError(
                f"parameters has no gradients: {type(self).__name__} needs at least one tensor "
                "with a .grad (call it after loss.backward(), with model.parameters())"
            )
        norm = self.measure(grads)
        result = self.decide(norm)
        self.apply(grads, result)
        return result

    def scales_uniformly(self) -> bool:
        """Whether :meth:`apply` multiplies every gradient by the one scalar ``result.coef``.

        Only then can the guarded step fold the coefficient into a fused optimizer instead of
        rewriting the gradients.
        """
        return type(self).apply is Clipper.apply

    def measure(self, grads: list[Tensor]) -> Tensor:
        """Return the total gradient norm (0-dim tensor) that :meth:`decide` judges."""
        return total_norm(grads, self.norm_type)

    @abstractmethod
    def decide(self, norm: Tensor) -> ClipResult:
        """Turn the measured ``norm`` into a coefficient, updating the clipper's state."""

    def apply(self, grads: list[Tensor], result: ClipResult) -> None:
        """Multiply every gradient by ``result.coef`` in place."""
        scale_grads_(grads, result.coef)

    def state_dict(self) -> dict[str, Any]:
        """Return the clipper's state (settings and statistics) as a dict."""
        return {"_version": self._version}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict`."""
        version = state_dict.get("_version")
        if version != self._version:
            raise ValueError(
                f"state_dict has _version {version!r}; {type(self).__name__} expects "
                f"{self._version}"
            )
