"""traintech: the techniques that make deep networks train stably, for PyTorch.

Families (imported on first use, so ``import traintech`` stays light):

- :mod:`traintech.clip`: gradient clipping, adaptive clippers and the guarded optimizer step.
- :mod:`traintech.init`: weight initialization, whole-model policies, LSUV, diagnostics.
- :mod:`traintech.norm`: normalization layers, their functional forms and utilities.
- :mod:`traintech.dropout`: the dropout family and Monte Carlo dropout.
- :mod:`traintech.monitor`: the training-health monitor and its report.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"

_FAMILIES = ("clip", "demo", "dropout", "init", "monitor", "norm")

__all__ = ["__version__", *_FAMILIES]


def __getattr__(name: str) -> ModuleType:
    if name in _FAMILIES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'traintech' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FAMILIES))
