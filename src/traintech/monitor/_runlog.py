"""The files of one monitored run: JSONL (always), CSV and TensorBoard (optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from traintech.monitor._runs import next_run_id
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

    A folder that already holds a log gets a new run: ``meta["run"]`` is set to one past the
    largest run id in ``monitor.jsonl`` and every JSONL line of this run carries ``"run"``.
    The ``meta`` line is written with the first record (a run that logs nothing leaves no
    trace), so :meth:`continue_run` can still put a resumed run back under its old id.

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
        self.meta = meta
        meta["run"] = next_run_id(log_dir / JSONL_NAME)
        self._meta_written = False
        self._jsonl: JsonlWriter | None = JsonlWriter(log_dir / JSONL_NAME)
        self._csv = CsvWriter(log_dir / CSV_NAME, csv_columns(params, modules)) if csv else None
        if tensorboard is None:
            tensorboard = tensorboard_available()
        self._tb = TensorBoardWriter(log_dir) if tensorboard else None

    @property
    def run(self) -> int:
        """This run's id in the log."""
        return int(self.meta["run"])

    def continue_run(self, run: int) -> None:
        """Write the following lines under run id ``run`` (a resumed run keeps its id)."""
        if run != self.meta["run"]:
            self.meta["run"] = run
            self._meta_written = False

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` to each file (the JSONL line with this run's id)."""
        if self._jsonl is not None:
            if not self._meta_written:
                self._jsonl.write({"meta": self.meta, "run": self.meta["run"]})
                self._meta_written = True
            self._jsonl.write({**record, "run": self.meta["run"]})
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
