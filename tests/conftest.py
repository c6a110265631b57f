"""Shared fixtures: one torch thread, a seeding fixture, float64 reference comparison."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from hypothesis import settings

# Property tests draw the same examples on every run (no flaky CI from a new random draw) and have
# no per-example deadline (a loaded shared machine is not a failure).
settings.register_profile("traintech", derandomize=True, deadline=None, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "traintech"))

# Our machines are shared: OpenMP threads under load make small-tensor work much slower.
torch.set_num_threads(int(os.environ.get("TRAINTECH_TEST_THREADS", "1")))


@pytest.fixture
def seed() -> torch.Generator:
    """Seed python, numpy and torch's global RNGs with 0; return a torch.Generator seeded 0."""
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002 (legacy global state some code still reads)
    torch.manual_seed(0)
    return torch.Generator().manual_seed(0)
