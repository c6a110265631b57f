"""Update-to-weight ratios: what the optimizer actually changed, measured on sampled steps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from traintech._compat import foreach_copy, foreach_norm, foreach_sub_


def foreach_norms(tensors: list[Tensor]) -> Tensor:
    """The 2-norm of each tensor, in one ``torch._foreach_norm`` call, stacked on one device.

    Accumulates in float32 (float64 when any tensor is float64), so fp16/bf16 do not overflow.
    """
    acc = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    norms = foreach_norm(tensors, 2, dtype=acc)
    device = norms[0].device
    return torch.stack([n.to(device) for n in norms])


class UpdateTracker:
    r"""Optimizer step hooks that measure :math:`\|w_t - w_{t-1}\|` and :math:`\|w_{t-1}\|`.

    On a step that ``sampled()`` selects, the pre-hook copies the parameters (one
    ``torch._foreach_mul``), and the post-hook takes the difference and both norms and frees
    the copy; other steps cost one Python call. The result waits in :meth:`take` until the
    monitor's next ``step()``. A step the optimizer does not run (e.g. skipped by a
    ``GradScaler``) leaves no result.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        named: Sequence[tuple[str, Tensor]],
        sampled: Callable[[], bool],
    ) -> None:
        by_id = {id(p): n for n, p in named}
        self.params = [
            (by_id[id(p)], p) for g in optimizer.param_groups for p in g["params"]
            if id(p) in by_id
        ]
        self._sampled = sampled
        self._before: tuple[list[Tensor], Tensor] | None = None
        self._result: Tensor | None = None
        self._handles: list[RemovableHandle] = [
            optimizer.register_step_pre_hook(self._pre),
            optimizer.register_step_post_hook(self._post),
        ]

    @property
    def names(self) -> list[str]:
        """Parameter names, in the order of :meth:`take`'s result."""
        return [n for n, _ in self.params]

    def _pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._before = None
        if not self.params or not self._sampled():
            return
        with torch.no_grad():
            params = [p.detach() for _, p in self.params]
            self._before = (foreach_copy(params), foreach_norms(params))

    def _post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._before is None:
            return
        (copy, weight_norms), self._before = self._before, None
        with torch.no_grad():
            foreach_sub_(copy, [p.detach() for _, p in self.params])  # w_{t-1} - w_t
            upd = foreach_norms(copy)
            self._result = torch.cat([upd, weight_norms.to(upd.device)])

    def take(self) -> Tensor | None:
        """The ``[update norms..., weight norms...]`` of the last sampled step, then forget it."""
        result, self._result = self._result, None
        return result

    def remove(self) -> None:
        """Remove the optimizer hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
