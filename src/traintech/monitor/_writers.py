"""Log writers of the monitor: JSONL (always), CSV, and TensorBoard when it is installed."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, BinaryIO, TextIO

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


_TB_FILES = itertools.count()


class TensorBoardWriter:
    """Scalars to a TensorBoard event file, written synchronously, one event per logged step.

    ``torch.utils.tensorboard`` hands each event to a writer thread that checksums it in pure
    Python while holding the GIL; waking that thread every step cost several milliseconds of
    the training thread's time on a busy machine. Writing the record here costs the checksum
    only (about a microsecond per byte) and no thread switch. The file is the standard
    ``events.out.tfevents.*`` TFRecord format that TensorBoard reads.
    """

    def __init__(self, log_dir: Path) -> None:
        try:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary
            from tensorboard.summary.writer.record_writer import RecordWriter
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "TensorBoard logging needs the tensorboard package: "
                "pip install 'traintech[monitor]'"
            ) from err
        self._event: Any = Event
        self._summary: Any = Summary
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_TB_FILES)}"
        )
        self._file: BinaryIO | None = open(log_dir / name, "wb")  # noqa: SIM115
        self._records: Any = RecordWriter(self._file)
        first = Event(wall_time=time.time(), file_version="brain.Event:2")
        self._records.write(first.SerializeToString())
        self._file.flush()

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        """Write each finite scalar under its tag at ``step`` as one event, and flush."""
        if self._file is None:
            raise ValueError("the TensorBoard writer is closed")
        values = [
            self._summary.Value(tag=tag, simple_value=float(value))
            for tag, value in scalars.items()
            if value is not None and math.isfinite(value)
        ]
        if values:
            event = self._event(
                wall_time=time.time(), step=step, summary=self._summary(value=values)
            )
            self._records.write(event.SerializeToString())
            self._file.flush()

    def close(self) -> None:
        """Close the event file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None
