"""The report :func:`init_model` returns: one record per parameter, printable as a table."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ._table import fmt_float, format_table

__all__ = ["InitRecord", "InitReport"]


@dataclass(frozen=True)
class InitRecord:
    """What :func:`init_model` did to one parameter (or buffer) and why.

    Attributes:
        name: qualified parameter name (``"encoder.0.weight"``).
        shape: its shape.
        init: the init applied, e.g. ``"kaiming_uniform(a=0, fan_in)"``, ``"zeros"``,
            ``"untouched"``.
        reason: why, e.g. ``"followed by ReLU 'net.1' (fx graph)"``.
        std: the standard deviation the init targets (``None`` when not defined).
    """

    name: str
    shape: tuple[int, ...]
    init: str
    reason: str
    std: float | None = None


@dataclass
class InitReport:
    """Records of :func:`init_model`, in module order; ``str(report)`` is a table.

    Attributes:
        records: one :class:`InitRecord` per parameter, in module order (shared parameters
            once).
        method: how activations were found: ``"fx"`` or ``"module order (...)"``.
        materialized: False when the model was on the meta device (nothing was written: the
            report is the plan; materialise with ``model.to_empty(device=...)`` and call again).
        buffers: records of buffer groups that were reset (norm layers' running statistics).
    """

    records: list[InitRecord] = field(default_factory=list)
    method: str = "fx"
    materialized: bool = True
    buffers: list[InitRecord] = field(default_factory=list)

    def __iter__(self) -> Iterator[InitRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, name: str) -> InitRecord:
        """The record of the parameter called ``name``."""
        for record in self.records:
            if record.name == name:
                return record
        raise KeyError(f"no parameter named {name!r} in the report")

    def __str__(self) -> str:
        rows = [
            [r.name, "x".join(map(str, r.shape)) or "-", r.init, fmt_float(r.std), r.reason]
            for r in [*self.records, *self.buffers]
        ]
        title = f"init_model: {len(self.records)} parameters, activations found by {self.method}"
        if not self.materialized:
            title += " (meta device: plan only, nothing written)"
        return title + "\n" + format_table(["parameter", "shape", "init", "std", "reason"], rows)
