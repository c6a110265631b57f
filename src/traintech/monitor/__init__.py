"""Training-health monitor: see exploding and vanishing gradients, spikes and NaNs early."""

from __future__ import annotations

from traintech.monitor._diagnosis import Finding, diagnose, format_findings
from traintech.monitor._hooks import activation_stats
from traintech.monitor._monitor import Monitor, NonFiniteError
from traintech.monitor._report import read_log, read_runs, render_report
from traintech.monitor._rollback import Rollback, RollbackGuard
from traintech.monitor._spikes import SpikeDetector

__all__ = [
    "Finding",
    "Monitor",
    "NonFiniteError",
    "Rollback",
    "RollbackGuard",
    "SpikeDetector",
    "activation_stats",
    "diagnose",
    "format_findings",
    "read_log",
    "read_runs",
    "render_report",
]

