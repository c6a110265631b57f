"""Claims, their checks and effects, and the rule that turns measured numbers into a verdict.

A claim is judged by checks (a measured number, usually a mean over seeds, against a threshold
written in the experiment's file) and by effects (a difference measured on each seed, with its
95% interval across seeds). The rule, applied here and nowhere else:

- **did not hold**: at least one check fails on the mean; never softened;
- **inconclusive**: every check passes on the mean, but some effect's interval includes no
  effect (the seeds disagree);
- **held**: every check passes and every effect's interval excludes no effect;
- **not tested**: nothing was measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from traintech.demo._stats import Interval

HELD = "held"
INCONCLUSIVE = "inconclusive"
NOT_HELD = "did not hold"
NOT_TESTED = "not tested"
VERDICTS = (HELD, INCONCLUSIVE, NOT_HELD, NOT_TESTED)

_OPS = (">=", "<=", ">", "<")


def _compare(value: float, op: str, threshold: float) -> bool:
    if math.isnan(value):
        return False
    if op == ">=":
        return value >= threshold
    if op == "<=":
        return value <= threshold
    if op == ">":
        return value > threshold
    return value < threshold


@dataclass(frozen=True)
class Check:
    """One measured number against its threshold.

    Attributes:
        what: what is measured, in words (e.g. "He test accuracy, mean over seeds").
        value: the measured number.
        op: one of ``>=``, ``<=``, ``>``, ``<``.
        threshold: the number it is compared with (printed at full precision).
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
        return _compare(self.value, self.op, self.threshold)

    def describe(self) -> str:
        """``"what = value (op threshold: pass|fail)"``, the threshold at full precision."""
        mark = "pass" if self.passed else "fail"
        return f"{self.what} = {fmt(self.value)} ({self.op} {exact(self.threshold)}: {mark})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with ``passed``."""
        return {
            "name": self.what,
            "value": self.value,
            "op": self.op,
            "threshold": self.threshold,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class Effect:
    """A difference measured on each seed, with its interval across seeds.

    Attributes:
        what: the difference in words, oriented so that the claim predicts ``op null``.
        interval: mean, 95% interval and per-seed values (see :class:`Interval`).
        op: ``>`` or ``<``: the direction the claim predicts.
        null: the value meaning "no effect" (0 for a difference, 0.5 for an AUROC).
    """

    what: str
    interval: Interval
    op: str = ">"
    null: float = 0.0

    def __post_init__(self) -> None:
        if self.op not in (">", "<"):
            raise ValueError(f"op must be '>' or '<', got {self.op!r}")

    @property
    def excludes_null(self) -> bool:
        """Whether the whole interval lies on the predicted side of ``null``."""
        bound = self.interval.low if self.op == ">" else self.interval.high
        return _compare(bound, self.op, self.null)

    def describe(self) -> str:
        """``"what: mean [low, high] (kind; per seed a, b, c)"``."""
        i = self.interval
        seeds = ", ".join(fmt(v) for v in i.values)
        side = "excludes" if self.excludes_null else "includes"
        return (
            f"{self.what}: {fmt(i.mean)} [{fmt(i.low)}, {fmt(i.high)}] ({i.kind}; per seed "
            f"{seeds}; {side} no effect, {exact(self.null)})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        i = self.interval
        return {
            "name": self.what,
            "mean": i.mean,
            "low": i.low,
            "high": i.high,
            "interval": i.kind,
            "per_seed": list(i.values),
            "predicted": f"{self.op} {exact(self.null)}",
            "excludes_no_effect": self.excludes_null,
        }


def judge(checks: Sequence[Check], effects: Sequence[Effect] = ()) -> str:
    """The verdict of a claim (see the module docstring for the rule).

    Raises:
        ValueError: if ``checks`` is empty.
    """
    if not checks:
        raise ValueError("checks is empty; a verdict needs at least one measured check")
    if not all(c.passed for c in checks):
        return NOT_HELD
    if not all(e.excludes_null for e in effects):
        return INCONCLUSIVE
    return HELD


_PREFIX = {
    HELD: "Held",
    INCONCLUSIVE: "Inconclusive (the mean passes, but the seeds' interval includes no effect)",
    NOT_HELD: "Did not hold",
    NOT_TESTED: "Not tested",
}


@dataclass
class Claim:
    """A claim from the guide, what was compared, its checks and effects, and the verdict.

    Attributes:
        key: stable identifier, e.g. ``"init.depth"``.
        experiment: the experiment that measured it.
        text: the claim as the guide or paper states it.
        compared: what was compared, in one sentence a practitioner can act on.
        checks: the checks on the mean (empty when not tested).
        effects: per-seed differences with their intervals.
        note: the setting, in a sentence.
        verdict: computed by :func:`judge` (or "not tested").
    """

    key: str
    experiment: str
    text: str
    compared: str = ""
    checks: list[Check] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    note: str = ""
    verdict: str = NOT_TESTED

    def __post_init__(self) -> None:
        self.verdict = judge(self.checks, self.effects) if self.checks else NOT_TESTED

    @property
    def sentence(self) -> str:
        """The verdict and what was compared, in one sentence."""
        return f"{_PREFIX[self.verdict]}: {self.compared or self.text}"

    def key_numbers(self) -> str:
        """Every check and effect, untruncated, ``; ``-separated."""
        parts = [c.describe() for c in self.checks] + [e.describe() for e in self.effects]
        return "; ".join(parts) if parts else self.note

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: verdict, sentence, checks with ``passed``, effects with intervals."""
        return {
            "key": self.key,
            "experiment": self.experiment,
            "text": self.text,
            "verdict": self.verdict,
            "sentence": self.sentence,
            "compared": self.compared,
            "checks": [c.to_dict() for c in self.checks],
            "effects": [e.to_dict() for e in self.effects],
            "note": self.note,
        }


def fmt(value: float) -> str:
    """Format a measured number: 4 significant digits, scientific when extreme."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4g}"


def exact(value: float) -> str:
    """A threshold at full precision: the shortest text that reads back as the same float."""
    if math.isinf(value) or math.isnan(value):
        return fmt(value)
    return repr(float(value))
