"""The report :func:`init_model` returns: one record per parameter, printable as a table.

Also the plain-text table helpers the LSUV and variance-profile reports share, and ``Action``:
a planned init (its record and the closure that performs it), so planning and writing are two
steps and a meta-device model gets the plan without a write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

__all__ = ["Action", "InitRecord", "InitReport", "fmt_float", "format_table"]


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
        aliases: the other names of a tied parameter (``("wte.weight",)`` for GPT-2's
            ``lm_head.weight``); the tensor is initialised once, under ``name``.
    """

    name: str
    shape: tuple[int, ...]
    init: str
    reason: str
    std: float | None = None
    aliases: tuple[str, ...] = ()


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
        uncovered: names of the parameters no rule covered (left untouched, or reset by their
            module's own ``reset_parameters()`` with the global RNG); ``init_model`` warns
            about them. Give them a ``scheme`` entry to cover them.
    """

    records: list[InitRecord] = field(default_factory=list)
    method: str = "fx"
    materialized: bool = True
    buffers: list[InitRecord] = field(default_factory=list)
    uncovered: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[InitRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, name: str) -> InitRecord:
        """The record of the parameter called ``name`` (or tied to it under that name)."""
        for record in self.records:
            if record.name == name or name in record.aliases:
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
        if self.uncovered:
            title += f"; no rule covers {len(self.uncovered)} (see .uncovered)"
        return title + "\n" + format_table(["parameter", "shape", "init", "std", "reason"], rows)


#: A planned init: its record and the closure that performs it.
Action = tuple[InitRecord, Callable[[], None]]


def fmt_float(value: float | None) -> str:
    """Format a statistic with 4 significant digits; ``-`` for missing."""
    if value is None:
        return "-"
    return f"{value:.4g}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, with a dashed rule under the header."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
