"""The shared half of our fast-path gates: is this a plain eager dense CPU tensor?

Our own CPU kernels (RMSNorm's ``traintech::rms_norm``, dropout's ``traintech::bit_dropout``)
are fast paths, not replacements: they run only where torch would run a plain eager CPU kernel,
and everywhere else torch's own op runs so that its decompositions, transform rules, tracers and
device kernels apply. :func:`plain_eager_cpu` is the part of that decision every family shares;
each family's ``use_fast_path`` adds its own conditions (dtypes, sizes, layout details).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from traintech import _compat

#: The exact tensor types a fast path accepts: subclasses (DTensor, fake/functional tensors,
#: nested tensors, user subclasses with ``__torch_function__``) take torch's op.
_PLAIN_TYPES = (Tensor, nn.Parameter)


def plain_eager_cpu(*tensors: Any) -> bool:
    """Whether every tensor is plain, dense, on the CPU and nothing would trace or transform it.

    ``None`` entries (an absent optional weight) are skipped; with no tensor left the answer
    is False. True only if every other entry is
    exactly a ``torch.Tensor`` or ``nn.Parameter`` (no subclass), on the CPU, strided, and not
    wrapped by a ``torch.func`` transform, and if none of these is active: ``torch.compile`` /
    ``torch.export``, TorchScript scripting or tracing, a ``torch.func`` transform, a
    forward-mode AD dual level, ``torch.fx`` symbolic tracing, a ``TorchDispatchMode`` (proxy
    tracing, fake tensors, functionalization, ``FlopCounterMode``, ...) or a
    ``TorchFunctionMode`` other than torch's device context.

    Args:
        *tensors: The op's tensor arguments (anything else makes the answer False).

    Returns:
        True where an own eager CPU kernel may run in place of torch's op.
    """
    present = [t for t in tensors if t is not None]
    if not present:
        return False
    for t in present:
        if type(t) not in _PLAIN_TYPES or t.device.type != "cpu" or t.layout != torch.strided:
            return False
    if torch.compiler.is_compiling() or torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    if _compat.functorch_transform_active() or _compat.forward_ad_active():
        return False
    if _compat.tracing_or_mode_active():
        return False
    return not any(_compat.is_functorch_wrapped(t) for t in present)
