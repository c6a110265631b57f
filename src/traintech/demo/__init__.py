"""The experiments behind ``traintech demo``: each technique's claims, tested on real data.

Five experiments (initialization, gradient clipping on an RNN, a small Transformer language
model, normalization in a residual CNN, dropout) run traintech's own implementations on data
available offline (scikit-learn's digits and sample photos, CPython's reference-manual text),
test each claim of the training-techniques guide in the setting the guide names, with the
control that rules out the trivial explanation and an interval across seeds, and write
``report.html``, ``report.md``, ``results.json`` and the PNG plots. Needs the optional extras:
``pip install 'traintech[demo]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["run_demo"]


def run_demo(
    *,
    quick: bool = False,
    out: str | Path = "traintech-demo",
    only: Sequence[str] = ("init", "clip", "transformer", "norm", "dropout"),
    seeds: int | None = None,
    threads: int = 1,
    jobs: int | None = None,
) -> int:
    """Run the demo experiments, write the report into ``out``; return the exit status.

    Args:
        quick: short settings (under a minute of CPU) instead of the full run (under five
            minutes of CPU on one thread).
        out: output folder, created if needed.
        only: which experiments to run, a subset of
            ``("init", "clip", "transformer", "norm", "dropout")``.
        seeds: seeds per experiment (0, 1, ... ``seeds - 1``); default 1 with ``quick``, else 3.
        threads: torch threads per experiment; the previous setting is restored after.
        jobs: experiments run in parallel processes; default the number of cores, at most the
            number of experiments. The numbers do not depend on it.

    Returns:
        0 when the report was written; 2 when an optional dependency or the text is missing.

    Raises:
        ValueError: if ``only``, ``seeds``, ``threads`` or ``jobs`` is invalid.

    Example:
        >>> from traintech.demo import run_demo
        >>> run_demo(quick=True, out="demo-out", only=["norm"])  # doctest: +SKIP
        0
    """
    from traintech.demo._runner import run

    return run(quick=quick, out=out, only=only, seeds=seeds, threads=threads, jobs=jobs)
