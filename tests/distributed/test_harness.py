"""The multi-process launcher: a failing rank or a hang ends the launch and is reported."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.distributed


def test_a_failing_rank_stops_the_launch_and_is_reported(run_ranks: Any) -> None:
    with pytest.raises(AssertionError, match="deliberate failure on the last rank") as info:
        run_ranks("_harness_workers:fail_on_last_rank", 2, timeout=300)
    # stopped when the rank failed: the rank stuck in the barrier was killed, not waited for
    assert "2 ranks failed" in str(info.value) and "timed out" not in str(info.value)


def test_a_hanging_launch_is_killed_at_the_timeout(run_ranks: Any) -> None:
    with pytest.raises(AssertionError, match="timed out after 8 s"):
        run_ranks("_harness_workers:hang", 2, timeout=8)
