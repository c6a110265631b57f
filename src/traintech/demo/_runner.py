"""Run the selected experiments with progress bars, then write the report and print a summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from traintech.demo._common import ExperimentResult, Tick
from traintech.demo._data import load_text, require

EXPERIMENTS = ("init", "clip", "norm", "dropout")
FULL_SEEDS = 3
QUICK_SEEDS = 1


def _plan(
    name: str, quick: bool, seeds: list[int]
) -> tuple[int, Callable[[Tick], ExperimentResult]]:
    """Return (number of progress ticks, runner) for experiment ``name``."""
    if name == "init":
        from traintech.demo._init_exp import InitConfig, run_init

        icfg = InitConfig.quick() if quick else InitConfig()
        return (len(seeds) * (3 + len(icfg.train_inits)), lambda tick: run_init(icfg, seeds, tick))
    if name == "clip":
        from traintech.demo._clip_exp import MODES, ClipConfig, run_clip

        ccfg = ClipConfig.quick() if quick else ClipConfig()
        return (
            len(seeds) * ccfg.steps * len(MODES),
            lambda tick: run_clip(ccfg, seeds, tick),
        )
    if name == "norm":
        from traintech.demo._norm_exp import NORMS, NormConfig, run_norm

        ncfg = NormConfig.quick() if quick else NormConfig()
        runs = len(NORMS) * (len(ncfg.batch_sizes) + len(ncfg.lr_sweep))
        return len(seeds) * runs, lambda tick: run_norm(ncfg, seeds, tick)
    if name == "dropout":
        from traintech.demo._dropout_exp import DropoutConfig, run_dropout

        dcfg = DropoutConfig.quick() if quick else DropoutConfig()
        return 5 * len(seeds), lambda tick: run_dropout(dcfg, seeds, tick)
    raise ValueError(f"only must name experiments among {EXPERIMENTS}, got {name!r}")


def _validate(only: Sequence[str], seeds: int | None, threads: int) -> list[str]:
    if isinstance(only, str):
        only = [s.strip() for s in only.split(",") if s.strip()]
    names = list(dict.fromkeys(only))
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown or not names:
        raise ValueError(
            f"only must be a non-empty subset of {','.join(EXPERIMENTS)}, got {list(only)!r}"
        )
    if seeds is not None and (not isinstance(seeds, int) or seeds < 1):
        raise ValueError(f"seeds must be a positive integer or None, got {seeds!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return [n for n in EXPERIMENTS if n in names]


def _summary_table(results: Sequence[ExperimentResult]) -> str:
    rows = [("claim", "verdict", "key numbers")]
    for r in results:
        for c in r.claims:
            text = c.text if len(c.text) <= 58 else c.text[:55] + "..."
            numbers = c.key_numbers()
            rows.append(
                (text, c.verdict, numbers if len(numbers) <= 110 else numbers[:107] + "...")
            )
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = []
    for i, (claim, verdict, numbers) in enumerate(rows):
        lines.append(f"{claim:<{widths[0]}}  {verdict:<{widths[1]}}  {numbers}")
        if i == 0:
            lines.append("-" * (widths[0] + widths[1] + 4 + 40))
    return "\n".join(lines)


def run(
    *, quick: bool, out: str | Path, only: Sequence[str], seeds: int | None, threads: int
) -> int:
    """Run the demo (see :func:`traintech.demo.run_demo`); return the exit status."""
    names = _validate(only, seeds, threads)
    try:
        tqdm = require("tqdm").tqdm
        for module in ("sklearn", "matplotlib"):
            require(module)
        text_source = load_text().source if {"clip", "dropout"} & set(names) else "not used"
    except (ModuleNotFoundError, RuntimeError) as err:
        print(f"traintech demo: {err}", file=sys.stderr)
        return 2
    n_seeds = seeds if seeds is not None else (QUICK_SEEDS if quick else FULL_SEEDS)
    seed_list = list(range(n_seeds))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from traintech.demo._plots import PLOTTERS
    from traintech.demo._report import write_html, write_json, write_markdown

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    start, cpu_start = time.perf_counter(), time.process_time()
    results: list[ExperimentResult] = []
    try:
        with torch.random.fork_rng(devices=[]):
            for name in names:
                total, runner = _plan(name, quick, seed_list)
                t0, c0 = time.perf_counter(), time.process_time()
                with tqdm(
                    total=total,
                    desc=f"{name:<8}",
                    unit="step",
                    leave=True,
                    file=sys.stderr,
                    mininterval=0.5,
                ) as bar:
                    result = runner(lambda: bar.update(1))
                result.seconds = time.perf_counter() - t0
                result.cpu_seconds = time.process_time() - c0
                result.plots = PLOTTERS[name](result, out_dir)
                results.append(result)
    finally:
        torch.set_num_threads(previous_threads)
    meta: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "seeds": seed_list,
        "threads": threads,
        "torch": torch.__version__,
        "experiments": names,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
        "text_source": text_source,
    }
    write_json(results, meta, out_dir / "results.json")
    write_markdown(results, meta, out_dir / "report.md")
    write_html(results, meta, out_dir)
    print()
    print(_summary_table(results))
    print()
    print(
        f"Report: {out_dir / 'report.html'} (also report.md, results.json, PNGs) "
        f"in {meta['seconds']:.0f} s ({meta['cpu_seconds']:.0f} s of CPU)."
    )
    return 0
