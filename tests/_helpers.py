"""Helpers for comparing traintech's results with float64 references.

Import in tests as ``from _helpers import assert_close_to_f64`` (``tests`` is on pytest's path).
"""

from __future__ import annotations

import torch

#: Default (rtol, atol) for a result computed in ``dtype`` against a float64 reference.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (2e-3, 1e-4),
    torch.bfloat16: (1.6e-2, 1e-3),
}


def tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """Return ``(rtol, atol)`` for results computed in ``dtype``."""
    return TOLERANCES[dtype]


def assert_close_to_f64(
    actual: torch.Tensor,
    reference: torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert ``actual`` equals a float64 ``reference`` within the tolerance of ``dtype``.

    ``dtype`` defaults to ``actual.dtype``; explicit ``rtol``/``atol`` override the table.
    """
    default_rtol, default_atol = tolerances(dtype or actual.dtype)
    torch.testing.assert_close(
        actual.detach().to(torch.float64).cpu(),
        reference.detach().to(torch.float64).cpu(),
        rtol=default_rtol if rtol is None else rtol,
        atol=default_atol if atol is None else atol,
    )
