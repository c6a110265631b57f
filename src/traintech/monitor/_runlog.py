"""The files of one monitored run: JSONL (always), CSV and TensorBoard (optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from traintech.monitor._writers import (
    CSV_NAME,
    JSONL_NAME,
    CsvWriter,
    JsonlWriter,
    TensorBoardWriter,
    tensorboard_available,
)

#: TensorBoard tags written on every logged step; the per-layer ones are sampled.
GLOBAL_TAGS = frozenset(
    ("loss", "grad_norm", "loss_z", "grad_z", "clip_norm", "clip_coef", "clip_threshold",
     "clip_skip")
)


def csv_columns(params: list[str], modules: list[str]) -> list[str]:
    """The fixed CSV header for a model's parameter and module names."""
    cols = ["step", "loss", "grad_norm", "loss_z", "grad_z"]
    cols += ["clip_norm", "clip_coef", "clip_threshold", "clip_skip"]
    cols += [f"grad_norm/{n}" for n in params]
    cols += [f"update_ratio/{n}" for n in params]
    for n in modules:
        cols += [f"act_mean/{n}", f"act_std/{n}", f"act_dead/{n}"]
    return cols


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """A logged record as flat ``name -> number`` columns (CSV header names, TensorBoard tags)."""
    row: dict[str, Any] = {
        "step": record["step"],
        "loss": record.get("loss"),
        "grad_norm": record.get("grad_norm"),
        "loss_z": record.get("loss_z"),
        "grad_z": record.get("grad_z"),
    }
    clip = record.get("clip")
    if clip:
        for key in ("norm", "coef", "threshold"):
            row[f"clip_{key}"] = clip[key]
        row["clip_skip"] = float(clip["skip"])
    for name, value in record.get("grad_norms", {}).items():
        row[f"grad_norm/{name}"] = value
    for name, value in record.get("update_ratio", {}).items():
        row[f"update_ratio/{name}"] = value
    for name, stats in record.get("activations", {}).items():
        for key in ("mean", "std", "dead"):
            row[f"act_{key}/{name}"] = stats[key]
    return row


class RunLog:
    """Write a run's ``meta`` line, then each record, to every enabled file (flushed at once).

    Args:
        log_dir: a folder checked writable by :func:`prepare_log_dir`.
        meta: the run description written as the first JSONL line.
        params: parameter names (CSV columns).
        modules: module names (CSV columns).
        csv: write ``monitor.csv``.
        tensorboard: write TensorBoard events; None: when ``tensorboard`` is installed.
        layers_every: per-layer TensorBoard tags every this many logged steps.
        every: the monitor's logging interval (to count logged steps).
    """

    def __init__(
        self,
        log_dir: Path,
        meta: dict[str, Any],
        params: list[str],
        modules: list[str],
        *,
        csv: bool,
        tensorboard: bool | None,
        layers_every: int,
        every: int,
    ) -> None:
        self.layers_every = layers_every
        self.every = every
        self._jsonl: JsonlWriter | None = JsonlWriter(log_dir / JSONL_NAME)
        self._jsonl.write({"meta": meta})
        self._csv = CsvWriter(log_dir / CSV_NAME, csv_columns(params, modules)) if csv else None
        if tensorboard is None:
            tensorboard = tensorboard_available()
        self._tb = TensorBoardWriter(log_dir) if tensorboard else None

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` to each file."""
        if self._jsonl is not None:
            self._jsonl.write(record)
        if self._csv is None and self._tb is None:
            return
        row = flatten(record)
        if self._csv is not None:
            self._csv.write(row)
        if self._tb is not None:
            sampled = "update_ratio" in record or "activations" in record
            if sampled or (record["step"] // self.every) % self.layers_every == 0:
                tags = {k: v for k, v in row.items() if k != "step"}
            else:
                tags = {k: v for k, v in row.items() if k in GLOBAL_TAGS}
            self._tb.write(record["step"], tags)

    def close(self) -> None:
        """Close every file (idempotent)."""
        for writer in (self._jsonl, self._csv, self._tb):
            if writer is not None:
                writer.close()
        self._jsonl = self._csv = self._tb = None
