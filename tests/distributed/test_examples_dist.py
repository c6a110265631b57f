"""The distributed examples, run with torchrun on 2 gloo processes for a few steps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _torchrun(script: str, env: dict[str, str], *args: str, timeout: float = 120) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = dict(env, PYTHONPATH=os.pathsep.join([str(EXAMPLES), env["PYTHONPATH"]]))
    # A new session, so a timeout can kill torchrun and the ranks it started (by group id).
    proc = subprocess.Popen(
        [*cmd, str(EXAMPLES / script), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"{script} timed out after {timeout} s:\n{out[-3000:]}") from None
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.mark.parametrize(
    ("script", "last_line"),
    [
        ("fsdp2_train.py", "clipper state identical on all ranks: True"),
        ("ddp_train.py", "replicas identical: True"),
    ],
)
def test_example_runs_and_every_rank_skips_the_nan_step(
    rank_env: dict[str, str], script: str, last_line: str
) -> None:
    out = _torchrun(script, rank_env, "--steps", "3", "--nan-step", "1", "--batch", "8")
    lines = [line for line in out.splitlines() if line.startswith(("step", "steps taken"))]
    assert any(line.startswith("step    1") and "skipped True" in line for line in lines), out
    assert any(line.startswith("step    2") and "skipped False" in line for line in lines), out
    assert lines[-1] == f"steps taken 2, skipped 1; {last_line}", out
