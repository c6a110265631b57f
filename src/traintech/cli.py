"""The ``traintech`` command: ``demo``, ``report`` and ``version``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from traintech import __version__

DEMO_EXPERIMENTS = ("init", "clip", "transformer", "norm", "dropout")


def _experiment_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in DEMO_EXPERIMENTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"--only got {text!r}; choose a comma-separated subset of {','.join(DEMO_EXPERIMENTS)}"
        )
    return names


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``traintech`` command."""
    parser = argparse.ArgumentParser(
        prog="traintech",
        description="Training-stability techniques for PyTorch: demo, monitor report, version.",
    )
    parser.add_argument(
        "--version", action="version", version=f"traintech {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the experiments that show each technique's effect on real data",
        description="Run the experiments that test each technique's claims on real data "
        "and write a report (HTML, Markdown, JSON and PNG plots).",
    )
    demo.add_argument("--quick", action="store_true", help="short run (about a minute)")
    demo.add_argument(
        "--out", default="traintech-demo", help="output folder (default: ./traintech-demo)"
    )
    demo.add_argument(
        "--only",
        type=_experiment_list,
        default=list(DEMO_EXPERIMENTS),
        help=f"comma-separated experiments to run (default: {','.join(DEMO_EXPERIMENTS)})",
    )
    demo.add_argument(
        "--seeds", type=_positive_int, default=None, help="number of seeds per experiment"
    )
    demo.add_argument(
        "--threads", type=_positive_int, default=1, help="torch threads to use (default: 1)"
    )
    demo.add_argument(
        "--jobs",
        type=_positive_int,
        default=None,
        help="experiments run in parallel processes (default: the number of cores, at most "
        "the number of experiments); the numbers are the same as a serial run's",
    )

    report = sub.add_parser(
        "report",
        help="render a monitor log as a self-contained HTML report",
        description="Read RUN_DIR's monitor log (JSONL) and write an HTML report with plots.",
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="folder written by traintech.Monitor")
    report.add_argument(
        "--out", default=None, help="HTML file to write (default: RUN_DIR/report.html)"
    )
    report.add_argument(
        "--run", type=_positive_int, default=None,
        help="which run of the log to plot, when a folder holds several (default: the last)",
    )

    sub.add_parser("version", help="print the traintech and torch versions")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``traintech`` command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        import torch

        print(f"traintech {__version__} (torch {torch.__version__})")
        return 0
    if args.command == "demo":
        from traintech.demo import run_demo

        return run_demo(
            quick=args.quick,
            out=args.out,
            only=args.only,
            seeds=args.seeds,
            threads=args.threads,
            jobs=args.jobs,
        )
    if args.command == "report":
        from traintech.monitor import render_report

        return render_report(args.run_dir, out=args.out, run=args.run)
    parser.print_help(sys.stderr)
    return 2
