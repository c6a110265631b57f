"""Adapters for the frameworks that own ``optimizer.step()``: Lightning, the HF Trainer, timm loops.

Each framework is imported only by its own module (``traintech.integrations.lightning``,
``traintech.integrations.hf``); importing this package imports none of them. A missing one
raises ``ImportError`` saying ``pip install 'traintech[integrations]'``. The accelerate recipe
needs no adapter: :class:`traintech.clip.GuardedStep` accepts an ``AcceleratedOptimizer``
(see ``docs/integrations.md``).
"""

from traintech.integrations._core import GradientGuard
from traintech.integrations._sinks import PendingLogs, accelerate_sink, lightning_sink
from traintech.integrations._timm import GuardedScaler

__all__ = ["GradientGuard", "GuardedScaler", "PendingLogs", "accelerate_sink", "lightning_sink"]
