"""Numeric constants shared across families: one value, one name."""

from __future__ import annotations

#: Added to a gradient norm before dividing by it (``max_norm / (norm + NORM_EPS)``), as torch's
#: ``clip_grad_norm_`` does; also the floor of a unit's norm in AGC.
NORM_EPS = 1e-6
