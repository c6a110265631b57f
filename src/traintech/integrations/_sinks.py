"""Ready ``Monitor(sink=...)`` callables that hand its numbers to a framework's own logger."""

from __future__ import annotations

from typing import Any


def lightning_sink(pl_module: Any) -> Any:
    """A sink calling ``pl_module.log_dict(metrics)`` (Lightning sends them to its loggers).

    Example:
        >>> class Module:
        ...     def log_dict(self, metrics):
        ...         print(metrics)
        >>> lightning_sink(Module())({"monitor/loss": 1.5}, 3)
        {'monitor/loss': 1.5}
    """

    def sink(metrics: dict[str, float], step: int) -> None:
        pl_module.log_dict(metrics)

    return sink


def accelerate_sink(accelerator: Any) -> Any:
    """A sink calling ``accelerator.log(metrics, step=step)`` (its trackers: TensorBoard, W&B).

    Example:
        >>> class Accelerator:
        ...     def log(self, values, step=None):
        ...         print(values, step)
        >>> accelerate_sink(Accelerator())({"monitor/loss": 1.5}, 3)
        {'monitor/loss': 1.5} 3
    """

    def sink(metrics: dict[str, float], step: int) -> None:
        accelerator.log(metrics, step=step)

    return sink


class PendingLogs:
    """A sink that keeps the latest metrics until the HF ``on_log`` dict takes them.

    The HF Trainer logs through ``Trainer.log(logs)``, which hands ``logs`` to every callback's
    ``on_log``; :meth:`merge_into` adds the pending metrics to it (the reporting callbacks after
    ours, and ``state.log_history``, then carry them).

    Example:
        >>> pending = PendingLogs()
        >>> pending({"monitor/loss": 1.5}, 3)
        >>> logs = {"loss": 1.5}
        >>> pending.merge_into(logs)
        >>> logs
        {'loss': 1.5, 'monitor/loss': 1.5}
    """

    def __init__(self) -> None:  # noqa: D107
        self.latest: dict[str, float] = {}

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        """Keep ``metrics`` (the newest replaces the older)."""
        self.latest = dict(metrics)

    def merge_into(self, logs: dict[str, Any]) -> None:
        """Add the pending metrics to ``logs`` and forget them."""
        logs.update(self.latest)
        self.latest = {}
