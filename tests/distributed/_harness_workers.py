"""Workers that misbehave on purpose, to test the launcher (run by ``_worker_main.py``)."""

from __future__ import annotations

import time

import torch.distributed as dist


def fail_on_last_rank(rank: int, world_size: int) -> int:
    """The last rank raises; the others wait in a collective that never completes."""
    if rank == world_size - 1:
        raise RuntimeError("deliberate failure on the last rank")
    dist.barrier()
    return rank


def hang(rank: int, world_size: int) -> int:
    """Every rank sleeps far past any timeout."""
    time.sleep(600)
    return rank
