"""Shared benchmark helpers: timing, peak memory, and a table with the baseline ratio.

Every benchmark script in this folder measures its torch (or peer) baseline in the same run,
checks that ours computes the same result before timing it, and prints ``baseline / ours``
as ``1.23x`` (above 1 means ours is faster).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


def common_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats (median is shown)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up calls")
    parser.add_argument("--device", default="cpu", help="device to run on (default cpu)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    return parser


def set_threads(n: int) -> None:
    """Use ``n`` torch threads and say so."""
    torch.set_num_threads(n)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")


def synchronize(device: str | torch.device = "cpu") -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_callable(
    fn: Callable[[], Any],
    *,
    repeats: int = 10,
    warmup: int = 3,
    setup: Callable[[], Any] | None = None,
    device: str | torch.device = "cpu",
) -> float:
    """Median wall time of ``fn()`` in seconds, over ``repeats`` runs after ``warmup`` runs.

    ``setup`` (untimed) runs before every call, e.g. to refill gradients that ``fn`` rewrites.
    """
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


_M_MMAP_THRESHOLD = -3


def _fix_malloc_threshold() -> None:
    # glibc raises its mmap threshold after large frees, after which freed tensors stay in the
    # heap and are invisible to RSS; a fixed threshold makes large tensors map and unmap.
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    except OSError:
        pass


_fix_malloc_threshold()


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak_memory_bytes(fn: Callable[[], Any], device: str | torch.device = "cpu") -> int:
    """Peak memory that ``fn()`` adds over what was in use before the call.

    On CUDA this is ``torch.cuda.max_memory_allocated``; on CPU (Linux) the rise of the
    process's resident-set high-water mark, which is reset before the call.
    """
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS")
    fn()
    return max(0, _status_kib("VmHWM") - base) * 1024


@dataclass
class Row:
    """One line of a benchmark table: a case, the baseline's and our time, optional memory."""

    case: str
    baseline_s: float
    ours_s: float
    baseline_name: str = "torch"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """``baseline / ours``: above 1 means ours is faster."""
        return self.baseline_s / self.ours_s


def fmt_time(seconds: float) -> str:
    """Format seconds with a unit that keeps 3-4 significant digits."""
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def fmt_bytes(n: float) -> str:
    """Format a byte count in MiB."""
    return f"{n / 2**20:.1f} MiB"


def print_table(title: str, rows: Sequence[Row], json_path: Path | None = None) -> None:
    """Print ``rows`` as a Markdown table with the ratio column; optionally dump them as JSON."""
    extra_keys: list[str] = []
    for row in rows:
        extra_keys += [k for k in row.extra if k not in extra_keys]
    header = ["case", "baseline", "baseline time", "ours", "speedup", *extra_keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row.case,
            row.baseline_name,
            fmt_time(row.baseline_s),
            fmt_time(row.ours_s),
            f"{row.ratio:.2f}x",
            *[str(row.extra.get(k, "")) for k in extra_keys],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    print(f"\n### {title}\n")
    print("\n".join(lines))
    if json_path is not None:
        payload = [asdict(r) | {"ratio": r.ratio} for r in rows]
        json_path.write_text(json.dumps({"title": title, "rows": payload}, indent=2))
