"""Log writers of the monitor: JSONL (always), CSV, and TensorBoard when it is installed."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, TextIO

JSONL_NAME = "monitor.jsonl"
CSV_NAME = "monitor.csv"


def finite_or_none(value: float | None) -> float | None:
    """``value`` when finite, else ``None`` (strict JSON has no NaN or Infinity)."""
    if value is None or not math.isfinite(value):
        return None
    return value


def prepare_log_dir(log_dir: str | Path) -> Path:
    """Create ``log_dir`` if needed and check that a file can be written in it.

    Raises:
        ValueError: naming ``log_dir`` when the folder cannot be created or written.
    """
    path = Path(log_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with open(path / JSONL_NAME, "a", encoding="utf-8"):
            pass
    except OSError as err:
        raise ValueError(
            f"log_dir ({str(log_dir)!r}) cannot be written: {err}; pass a writable folder, "
            "or log_dir=None to keep the statistics in memory only"
        ) from err
    return path


class JsonlWriter:
    """Append one JSON object per line and flush it, so a crash loses nothing logged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO | None = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, obj: dict[str, Any]) -> None:
        """Write ``obj`` as one line and flush."""
        if self._file is None:
            raise ValueError(f"the JSONL writer of {str(self.path)!r} is closed")
        self._file.write(json.dumps(obj, allow_nan=False, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None


class CsvWriter:
    """One row per logged step with a fixed header; empty cells where a value was not sampled."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns
        fresh = not path.exists() or path.stat().st_size == 0
        self._file: TextIO | None = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115
        self._writer = csv.writer(self._file)
        if fresh:
            self._writer.writerow(columns)
            self._file.flush()

    def write(self, row: dict[str, Any]) -> None:
        """Write the values of ``row`` in header order and flush."""
        if self._file is None:
            raise ValueError(f"the CSV writer of {str(self.path)!r} is closed")
        self._writer.writerow(["" if (v := row.get(c)) is None else repr(v) for c in self.columns])
        self._file.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can be imported (the ``tensorboard`` package)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardWriter:
    """Scalars to TensorBoard event files, one event (with every tag) per logged step.

    Uses ``torch.utils.tensorboard.FileWriter`` with one multi-value ``Summary`` per step:
    ``SummaryWriter.add_scalar`` writes one event per tag, and each hands work to the writer
    thread, which costs far more than the monitor itself at a few dozen tags.
    """

    def __init__(self, log_dir: Path) -> None:
        try:
            from tensorboard.compat.proto.summary_pb2 import Summary
            from torch.utils.tensorboard.writer import FileWriter
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "TensorBoard logging needs the tensorboard package: "
                "pip install 'traintech[monitor]'"
            ) from err
        self._summary: Any = Summary
        self._writer: Any = FileWriter(str(log_dir))

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        """Add each finite scalar under its tag at ``step`` (one event)."""
        values = [
            self._summary.Value(tag=tag, simple_value=float(value))
            for tag, value in scalars.items()
            if value is not None and math.isfinite(value)
        ]
        if values:
            self._writer.add_summary(self._summary(value=values), step)

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()
