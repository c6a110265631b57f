"""``no_host_sync()``: the block raises on any host-device synchronization (GPU tests).

Import as ``from _cuda_sync import no_host_sync`` (``tests`` is on pytest's path).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def no_host_sync() -> Iterator[None]:
    """Raise on any synchronizing CUDA call inside the block (a ``.item()``, a host copy, ...)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")
