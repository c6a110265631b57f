"""The experiments behind ``traintech demo``: each technique's claims, tested on real data.

Four experiments (initialization, gradient clipping, normalization, dropout) run traintech's
own implementations on data available offline (scikit-learn's digits and sample photos,
CPython's reference-manual text), judge each claim of the training-techniques guide against
thresholds written in the code, and write ``report.html``, ``report.md``, ``results.json`` and
the PNG plots. Needs the optional extras: ``pip install 'traintech[demo]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["run_demo"]


def run_demo(
    *,
    quick: bool = False,
    out: str | Path = "traintech-demo",
    only: Sequence[str] = ("init", "clip", "norm", "dropout"),
    seeds: int | None = None,
    threads: int = 1,
) -> int:
    """Run the demo experiments, write the report into ``out``; return the exit status.

    Args:
        quick: short settings (about a minute on one thread) instead of the full run (about
            five minutes).
        out: output folder, created if needed.
        only: which experiments to run, a subset of ``("init", "clip", "norm", "dropout")``.
        seeds: seeds per experiment (0, 1, ... ``seeds - 1``); default 1 with ``quick``, else 3.
        threads: torch threads to use during the run; the previous setting is restored after.

    Returns:
        0 when the report was written; 2 when an optional dependency or the text is missing.

    Raises:
        ValueError: if ``only``, ``seeds`` or ``threads`` is invalid.

    Example:
        >>> from traintech.demo import run_demo
        >>> run_demo(quick=True, out="demo-out", only=["norm"])  # doctest: +SKIP
        0
    """
    from traintech.demo._runner import run

    return run(quick=quick, out=out, only=only, seeds=seeds, threads=threads)
