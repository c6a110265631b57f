"""Claims, thresholds and the rule that turns measured numbers into a verdict.

A claim is judged by a list of checks, each a measured value compared with a threshold written
here. The verdict follows from how many checks pass: all of them, "held"; some, "held in part";
none, "did not hold". A claim whose arm could not run (an implementation missing from this build)
is "not tested". Nothing is decided anywhere else: the report prints the checks next to the verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

HELD = "held"
IN_PART = "held in part"
NOT_HELD = "did not hold"
NOT_TESTED = "not tested"
VERDICTS = (HELD, IN_PART, NOT_HELD, NOT_TESTED)

_OPS = (">=", "<=", ">", "<")


@dataclass(frozen=True)
class Check:
    """One measured number against its threshold.

    Attributes:
        what: what is measured, in words (e.g. "He test accuracy").
        value: the measured number.
        op: one of ``>=``, ``<=``, ``>``, ``<``.
        threshold: the number it is compared with.
    """

    what: str
    value: float
    op: str
    threshold: float

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"op must be one of {_OPS}, got {self.op!r}")

    @property
    def passed(self) -> bool:
        """Whether the measured value satisfies the threshold (NaN never does)."""
        v, t = self.value, self.threshold
        if math.isnan(v):
            return False
        if self.op == ">=":
            return v >= t
        if self.op == "<=":
            return v <= t
        if self.op == ">":
            return v > t
        return v < t

    def describe(self) -> str:
        """``"what = value (op threshold: pass|fail)"``."""
        mark = "pass" if self.passed else "fail"
        return f"{self.what} = {fmt(self.value)} ({self.op} {fmt(self.threshold)}: {mark})"


def judge(checks: Sequence[Check]) -> str:
    """The verdict of a list of checks: all pass "held", some "held in part", none "did not hold".

    Raises:
        ValueError: if ``checks`` is empty.
    """
    if not checks:
        raise ValueError("checks is empty; a verdict needs at least one measured check")
    passed = sum(c.passed for c in checks)
    if passed == len(checks):
        return HELD
    if passed == 0:
        return NOT_HELD
    return IN_PART


@dataclass
class Claim:
    """A claim from the guide, the checks that test it, and the resulting verdict.

    Attributes:
        key: stable identifier, e.g. ``"init.depth"``.
        experiment: ``init``, ``clip``, ``norm`` or ``dropout``.
        text: the claim as the guide or paper states it.
        checks: the measured checks (empty when not tested).
        note: what the numbers mean, in a sentence.
        verdict: computed by :func:`judge` (or "not tested").
    """

    key: str
    experiment: str
    text: str
    checks: list[Check] = field(default_factory=list)
    note: str = ""
    verdict: str = NOT_TESTED

    def __post_init__(self) -> None:
        self.verdict = judge(self.checks) if self.checks else NOT_TESTED

    def key_numbers(self) -> str:
        """The checks as one short line for the terminal summary."""
        if not self.checks:
            return self.note
        seen = dict.fromkeys(f"{c.what} {fmt(c.value)}" for c in self.checks)
        return "; ".join(seen)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with each check's pass/fail."""
        out = asdict(self)
        for entry, check in zip(out["checks"], self.checks, strict=True):
            entry["passed"] = check.passed
        return out


def fmt(value: float) -> str:
    """Format a number compactly for tables: 3 significant digits, scientific when extreme."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.3g}"
