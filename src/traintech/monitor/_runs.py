"""Several runs in one monitor log: each line carries its run id; split them when reading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def next_run_id(path: Path) -> int:
    """The id of a new run appended to the JSONL log at ``path``: one past the largest there.

    Only ``meta`` lines are parsed (each run writes one before its first record, so they hold
    every run id; the record lines are not decoded). A log written before run ids existed
    counts as run 1.
    """
    if not path.is_file():
        return 1
    largest = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.startswith('{"meta"'):
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            run = run_of(obj, 1)
            largest = max(largest, run)
    return largest + 1


def run_of(obj: dict[str, Any], current: int) -> int:
    """The run a log line belongs to: its own ``run`` field, else the run being read."""
    run = obj.get("run")
    if "meta" in obj and isinstance(obj["meta"], dict):
        run = obj["meta"].get("run", run)
    if isinstance(run, int) and not isinstance(run, bool):
        return run
    return current


def merge_meta(meta: dict[str, Any], update: dict[str, Any]) -> None:
    """Merge a ``meta`` line into ``meta`` (nested dicts are merged key by key)."""
    for key, value in update.items():
        if isinstance(value, dict):
            meta.setdefault(key, {}).update(value)
        else:
            meta[key] = value
