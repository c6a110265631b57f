"""Fixture ``run_ranks``: run a worker function on several gloo processes and collect results.

Each rank is a fresh ``python`` process (``_worker_main.py``) with one torch thread, joined
through a file store in ``tmp_path`` (no port to race for). The whole launch has a hard
timeout: processes still running then are killed (each by its own id) and the test fails with
every rank's traceback and stderr tail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import traintech

HERE = Path(__file__).resolve().parent
#: Directory holding the ``traintech`` package the parent process imported.
SRC = Path(traintech.__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    """Environment of a rank: our traintech first on the path, one thread."""
    env = dict(os.environ)
    paths = [str(HERE), str(SRC)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    return env


def _tail(path: Path, limit: int = 3000) -> str:
    return path.read_text()[-limit:] if path.exists() else ""


def launch(
    target: str,
    world_size: int,
    workdir: Path,
    timeout: float = 60.0,
    **kwargs: Any,
) -> list[Any]:
    """Run ``target`` (``"module:function"``, module in this folder) on ``world_size`` ranks.

    Returns the list of the ranks' return values, in rank order.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    kwargs_file = workdir / "kwargs.pt"
    torch.save(kwargs, kwargs_file)
    store = workdir / "store"
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    env = child_env()
    for rank in range(world_size):
        log = open(workdir / f"rank{rank}.log", "wb")  # noqa: SIM115 (closed below)
        logs.append(log)
        cmd = [
            sys.executable,
            str(HERE / "_worker_main.py"),
            str(rank),
            str(world_size),
            str(store),
            str(workdir),
            target,
            str(kwargs_file),
        ]
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        # Poll: when one rank fails, the others would wait in a collective until the timeout,
        # so stop them at once.
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs):
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.02)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    failures = []
    for rank, proc in enumerate(procs):
        if proc.returncode != 0 or timed_out:
            failures.append(
                f"--- rank {rank} (exit {proc.returncode}) ---\n"
                f"{_tail(workdir / f'rank{rank}.err')}\n{_tail(workdir / f'rank{rank}.log')}"
            )
    if failures:
        reason = f"timed out after {timeout:.0f} s" if timed_out else "failed"
        raise AssertionError(f"{target} on {world_size} ranks {reason}:\n" + "\n".join(failures))
    return [torch.load(workdir / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


@pytest.fixture(scope="session")
def rank_env() -> dict[str, str]:
    """The environment :func:`launch` gives each rank (for tests that start ``torchrun``)."""
    return child_env()


@pytest.fixture(scope="session")
def run_ranks(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[Any]]:
    """``run_ranks(target, world_size, timeout=60, **kwargs)`` -> list of per-rank results.

    Session-scoped, so module-scoped fixtures can launch once and serve many tests.
    """

    def run(target: str, world_size: int, timeout: float = 60.0, **kwargs: Any) -> list[Any]:
        workdir = tmp_path_factory.mktemp(target.replace(":", "_"))
        return launch(target, world_size, workdir, timeout=timeout, **kwargs)

    return run
