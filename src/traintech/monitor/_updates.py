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


#: Default bound on the elements :class:`UpdateTracker` copies on one sampled step (16 MiB of
#: float32): larger models are measured a part at a time, in rotation.
DEFAULT_MAX_NUMEL = 1 << 22

# One piece of a chunk: (index of the parameter, first element, one past the last element).
_Piece = tuple[int, int, int]


def plan_chunks(numels: Sequence[int], max_numel: int) -> list[list[_Piece]]:
    """Split parameters of ``numels`` elements into chunks of at most ``max_numel`` elements.

    Parameters are taken in order; one larger than what is left of a chunk is cut into
    contiguous pieces of its flattened elements, so no chunk exceeds ``max_numel``.
    """
    chunks: list[list[_Piece]] = []
    current: list[_Piece] = []
    room = max_numel
    for index, numel in enumerate(numels):
        start = 0
        while start < numel:
            take = min(room, numel - start)
            current.append((index, start, start + take))
            start += take
            room -= take
            if room == 0:
                chunks.append(current)
                current, room = [], max_numel
    if current:
        chunks.append(current)
    return chunks


class UpdateTracker:
    r"""Optimizer step hooks that measure :math:`\|w_t - w_{t-1}\|` and :math:`\|w_{t-1}\|`.

    On a step that ``sampled()`` selects, the pre-hook copies one chunk of the parameters (one
    ``torch._foreach_copy``), and the post-hook takes the difference and both norms and frees
    the copy; other steps cost one Python call. The extra memory is bounded by ``max_numel``
    elements: the parameters are split into chunks of at most that many elements (a tensor
    larger than a chunk is measured a contiguous slice of its flattened elements at a time)
    and successive sampled steps measure successive chunks, in rotation; a model that fits in
    one chunk is measured whole on every sampled step. The result waits in :meth:`take` until
    the monitor's next ``step()``, with :attr:`names` naming its entries. A step the optimizer
    does not run (e.g. skipped by a ``GradScaler``) leaves no result.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        named: Sequence[tuple[str, Tensor]],
        sampled: Callable[[], bool],
        max_numel: int = DEFAULT_MAX_NUMEL,
    ) -> None:
        by_id = {id(p): n for n, p in named}
        self.params = [
            (by_id[id(p)], p) for g in optimizer.param_groups for p in g["params"]
            if id(p) in by_id
        ]
        self.max_numel = max_numel
        self.chunks = plan_chunks([p.numel() for _, p in self.params], max_numel)
        self._next = 0
        self._sampled = sampled
        self._before: tuple[list[_Piece], list[Tensor], Tensor] | None = None
        self._result: Tensor | None = None
        self._names: list[str] = []
        self.peak_copied = 0
        self._handles: list[RemovableHandle] = [
            optimizer.register_step_pre_hook(self._pre),
            optimizer.register_step_post_hook(self._post),
        ]

    @property
    def names(self) -> list[str]:
        """Parameter names of the last result, in the order of :meth:`take`'s result."""
        return list(self._names)

    def _views(self, chunk: list[_Piece]) -> list[Tensor]:
        out = []
        for index, start, stop in chunk:
            p = self.params[index][1].detach()
            whole = start == 0 and stop == p.numel()
            out.append(p if whole else p.reshape(-1)[start:stop])
        return out

    def _pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._before = None
        if not self.chunks or not self._sampled():
            return
        chunk = self.chunks[self._next]
        self._next = (self._next + 1) % len(self.chunks)
        with torch.no_grad():
            views = self._views(chunk)
            copy = foreach_copy(views)
            self.peak_copied = max(self.peak_copied, sum(c.numel() for c in copy))
            self._before = (chunk, copy, foreach_norms(views))

    def _post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._before is None:
            return
        (chunk, copy, weight_norms), self._before = self._before, None
        with torch.no_grad():
            foreach_sub_(copy, self._views(chunk))  # w_{t-1} - w_t
            upd = foreach_norms(copy)
            self._result = torch.cat([upd, weight_norms.to(upd.device)])
            self._names = [self.params[index][0] for index, _, _ in chunk]

    def take(self) -> Tensor | None:
        """The ``[update norms..., weight norms...]`` of the last sampled step, then forget it."""
        result, self._result = self._result, None
        return result

    def remove(self) -> None:
        """Remove the optimizer hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
