"""The experiments behind ``traintech demo``."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["run_demo"]


def run_demo(
    *,
    quick: bool = False,
    out: str = "traintech-demo",
    only: Sequence[str] = ("init", "clip", "norm", "dropout"),
    seeds: int | None = None,
    threads: int = 1,
) -> int:
    """Run the demo experiments; return the exit status."""
    print(
        "traintech demo: no experiments are implemented in this version yet "
        f"(asked for: {', '.join(only)}); nothing was run and nothing was written to {out!r}."
    )
    return 0
