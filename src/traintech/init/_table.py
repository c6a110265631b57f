"""Plain-text tables for the reports (no dependencies)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table", "fmt_float"]


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
