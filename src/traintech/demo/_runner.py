"""Run the selected experiments (serially or in parallel processes), write the report, summarize.

Each experiment is a pure function of its configuration and seeds: it seeds torch and its own
generators before every run and runs under a forked RNG, so a parallel run (``jobs > 1``, one
process per experiment) gives the same numbers as a serial one.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TextIO

import torch

from traintech.demo._common import ExperimentResult, Tick
from traintech.demo._data import load_text, require

EXPERIMENTS = ("init", "clip", "transformer", "norm", "dropout")
FULL_SEEDS = 3
QUICK_SEEDS = 1


def _plan(
    name: str, quick: bool, seeds: list[int]
) -> tuple[int, Callable[[Tick], ExperimentResult]]:
    """Return (number of progress ticks, runner) for experiment ``name``."""
    n = len(seeds)
    if name == "init":
        from traintech.demo._init_exp import InitConfig, run_init

        icfg = InitConfig.quick() if quick else InitConfig()
        return n * (3 + len(icfg.train_inits)), lambda tick: run_init(icfg, seeds, tick)
    if name == "clip":
        from traintech.demo._clip_exp import ClipConfig, run_clip

        ccfg = ClipConfig.quick() if quick else ClipConfig()
        return n * (4 + len(ccfg.lower_lrs)), lambda tick: run_clip(ccfg, seeds, tick)
    if name == "transformer":
        from traintech.demo._transformer_exp import (
            CLIPS,
            NORMS,
            TransformerConfig,
            run_transformer,
        )

        tcfg = TransformerConfig.quick() if quick else TransformerConfig()
        ticks = n * (len(NORMS) + len(CLIPS) + 1 + len(tcfg.lower_lrs))
        return ticks, lambda tick: run_transformer(tcfg, seeds, tick)
    if name == "norm":
        from traintech.demo._norm_exp import NORMS as CNN_NORMS
        from traintech.demo._norm_exp import NormConfig, run_norm

        ncfg = NormConfig.quick() if quick else NormConfig()
        runs = len(CNN_NORMS) * (len(ncfg.batch_sizes) + len(ncfg.lr_sweep))
        return n * runs, lambda tick: run_norm(ncfg, seeds, tick)
    if name == "dropout":
        from traintech.demo._dropout_exp import DropoutConfig, run_dropout

        dcfg = DropoutConfig.quick() if quick else DropoutConfig()
        return 5 * n, lambda tick: run_dropout(dcfg, seeds, tick)
    raise ValueError(f"only must name experiments among {EXPERIMENTS}, got {name!r}")


def default_jobs(n_experiments: int) -> int:
    """The number of cores this process may use, at most ``n_experiments``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, n_experiments))


def _validate(only: Sequence[str], seeds: int | None, threads: int, jobs: int | None) -> list[str]:
    if isinstance(only, str):
        only = [s.strip() for s in only.split(",") if s.strip()]
    names = list(dict.fromkeys(only))
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown or not names:
        raise ValueError(
            f"only must be a non-empty subset of {','.join(EXPERIMENTS)}, got {list(only)!r}"
        )
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise ValueError(f"seeds must be a positive integer or None, got {seeds!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be a positive integer or None, got {jobs!r}")
    return [n for n in EXPERIMENTS if n in names]


class LineProgress:
    """Progress as plain lines (for logs and pipes): one line per quarter of the work."""

    def __init__(self, name: str, total: int, stream: TextIO) -> None:
        self.name, self.total, self.stream = name, max(total, 1), stream
        self.done = 0
        self.reported = 0
        self.start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        """Count ``n`` units of work; print a line when a new quarter is reached."""
        self.done += n
        quarter = min(4, 4 * self.done // self.total)
        if quarter > self.reported:
            self.reported = quarter
            elapsed = time.perf_counter() - self.start
            print(
                f"[{self.name}] {25 * quarter}% ({self.done}/{self.total} runs, {elapsed:.0f} s)",
                file=self.stream,
                flush=True,
            )


def run_experiment(
    name: str, quick: bool, seeds: list[int], threads: int, bar: bool
) -> ExperimentResult:
    """Run one experiment under a forked RNG seeded with 0, timed; the unit a worker runs."""
    torch.set_num_threads(threads)
    total, runner = _plan(name, quick, seeds)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if bar:
            tqdm = require("tqdm").tqdm
            with tqdm(total=total, desc=f"{name:<11}", unit="run", file=sys.stderr) as progress:
                result = runner(lambda: progress.update(1))
        else:
            lines = LineProgress(name, total, sys.stderr)
            result = runner(lambda: lines.update(1))
    result.seconds = time.perf_counter() - t0
    result.cpu_seconds = time.process_time() - c0
    return result


def _run_all(
    names: list[str], quick: bool, seeds: list[int], threads: int, jobs: int
) -> list[ExperimentResult]:
    if jobs == 1:
        bar = sys.stderr.isatty() and sys.stdout.isatty()
        return [run_experiment(n, quick, seeds, threads, bar) for n in names]
    done: dict[str, ExperimentResult] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(run_experiment, n, quick, seeds, threads, False): n for n in names}
        for future in as_completed(futures):
            result = future.result()
            done[futures[future]] = result
            print(
                f"[{result.name}] finished: {result.seconds:.0f} s ({result.cpu_seconds:.0f} s "
                "of CPU)",
                file=sys.stderr,
                flush=True,
            )
    return [done[n] for n in names]


def summary_lines(results: Sequence[ExperimentResult], width: int = 100) -> list[str]:
    """The terminal summary: every claim's verdict sentence and every number, wrapped, never cut."""
    lines: list[str] = []
    for r in results:
        lines.append(f"== {r.title} ({r.cpu_seconds:.0f} s of CPU)")
        for c in r.claims:
            lines += textwrap.wrap(
                f"[{c.verdict}] {c.text}",
                width,
                subsequent_indent="    ",
                break_long_words=False,
                break_on_hyphens=False,
            )
            lines += textwrap.wrap(
                c.sentence,
                width,
                initial_indent="    ",
                subsequent_indent="    ",
                break_long_words=False,
                break_on_hyphens=False,
            )
            parts = [ch.describe() for ch in c.checks] + [e.describe() for e in c.effects]
            for part in parts:
                lines += textwrap.wrap(
                    part,
                    width,
                    initial_indent="    - ",
                    subsequent_indent="      ",
                    break_long_words=False,
                    break_on_hyphens=False,
                )
    return lines


def run(
    *,
    quick: bool,
    out: str | Path,
    only: Sequence[str],
    seeds: int | None,
    threads: int,
    jobs: int | None = None,
) -> int:
    """Run the demo (see :func:`traintech.demo.run_demo`); return the exit status."""
    names = _validate(only, seeds, threads, jobs)
    try:
        require("tqdm")
        for module in ("sklearn", "matplotlib"):
            require(module)
        uses_text = {"clip", "transformer", "dropout"} & set(names)
        text_source = load_text().source if uses_text else "not used"
    except (ModuleNotFoundError, RuntimeError) as err:
        print(f"traintech demo: {err}", file=sys.stderr)
        return 2
    n_jobs = jobs if jobs is not None else default_jobs(len(names))
    n_jobs = min(n_jobs, len(names))
    n_seeds = seeds if seeds is not None else (QUICK_SEEDS if quick else FULL_SEEDS)
    seed_list = list(range(n_seeds))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from traintech.demo._plots import PLOTTERS
    from traintech.demo._report import write_html, write_json, write_markdown

    previous_threads = torch.get_num_threads()
    start = time.perf_counter()
    try:
        results = _run_all(names, quick, seed_list, threads, n_jobs)
    finally:
        torch.set_num_threads(previous_threads)
    for result in results:
        result.plots = PLOTTERS[result.name](result, out_dir)
    meta: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "seeds": seed_list,
        "threads": threads,
        "jobs": n_jobs,
        "torch": torch.__version__,
        "experiments": names,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": sum(r.cpu_seconds for r in results),
        "text_source": text_source,
    }
    write_json(results, meta, out_dir / "results.json")
    write_markdown(results, meta, out_dir / "report.md")
    write_html(results, meta, out_dir)
    print()
    print("\n".join(summary_lines(results)))
    print()
    print(
        f"Report: {out_dir / 'report.html'} (also report.md, results.json, PNGs) "
        f"in {meta['seconds']:.0f} s ({meta['cpu_seconds']:.0f} s of CPU in the experiments)."
    )
    return 0
