"""Per-step cost of the integration paths against torch's eager clip + step.

Every case runs one optimizer step on the gradients of a small transformer-like stack (fresh
gradient copies before each call, untimed): torch's ``clip_grad_norm_`` + ``opt.step()`` is the
baseline, measured in the same run, the two sides alternated, the fastest of ``--repeats`` runs
kept. The A/A row (torch against itself) shows the noise. Cases: ``GuardedStep`` on the plain
optimizer, on a wrapper (unwrapping), ``GuardedOptimizer.step``, the adapters'
``GradientGuard.before_step`` + ``opt.step()``, and ``GuardedStep`` with ``ZClip`` (its one
tensor-path rule on CPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from traintech.clip import GuardedOptimizer, GuardedStep, NormClip, ZClip
from traintech.integrations import GradientGuard

from _harness import Row, common_parser, print_table, set_threads


@dataclass(frozen=True)
class Config:
    """The model: ``layers`` blocks of width ``width``."""

    layers: int = 4
    width: int = 256


class _Wrapper:
    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer


def _model(cfg: Config) -> torch.nn.Module:
    torch.manual_seed(0)
    blocks: list[torch.nn.Module] = []
    for _ in range(cfg.layers):
        blocks += [torch.nn.LayerNorm(cfg.width), torch.nn.Linear(cfg.width, 4 * cfg.width),
                   torch.nn.GELU(), torch.nn.Linear(4 * cfg.width, cfg.width)]
    return torch.nn.Sequential(*blocks)


def _side(cfg: Config, make: Callable[[torch.nn.Module, torch.optim.Optimizer], Callable[[], Any]]
          ) -> tuple[Callable[[], None], Callable[[], Any]]:
    model = _model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    grads = [torch.randn_like(p) * 1e-2 for p in model.parameters()]

    def refill() -> None:
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g.clone()

    return refill, make(model, opt)


def _torch(model: torch.nn.Module, opt: torch.optim.Optimizer) -> Callable[[], Any]:
    def step() -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def _adapter(opt: torch.optim.Optimizer) -> Callable[[], Any]:
    guard = GradientGuard(NormClip(1.0))

    def step() -> None:
        guard.before_step(opt)
        opt.step()

    return step


CASES: dict[str, Callable[[torch.nn.Module, torch.optim.Optimizer], Callable[[], Any]]] = {
    "A/A: torch clip + step": _torch,
    "GuardedStep(opt, NormClip)": lambda m, o: GuardedStep(o, NormClip(1.0)).step,
    "GuardedStep(wrapper, NormClip)": lambda m, o: GuardedStep(_Wrapper(o), NormClip(1.0)).step,
    "GuardedOptimizer(opt, NormClip).step": lambda m, o: GuardedOptimizer(o, NormClip(1.0)).step,
    "GradientGuard.before_step + opt.step": lambda m, o: _adapter(o),
    "GuardedStep(opt, ZClip)": lambda m, o: GuardedStep(o, ZClip(warmup_steps=3)).step,
}


def _alternate(base: tuple[Callable[[], None], Callable[[], Any]],
               ours: tuple[Callable[[], None], Callable[[], Any]], repeats: int, warmup: int
               ) -> tuple[float, float]:
    best = [float("inf"), float("inf")]
    for i in range(warmup + repeats):
        for k, (refill, fn) in enumerate((base, ours)):
            refill()
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if i >= warmup:
                best[k] = min(best[k], elapsed)
    return best[0], best[1]


def main() -> None:
    """Run every case at each requested thread count and print one table per count."""
    parser = common_parser(__doc__ or "")
    parser.add_argument("--thread-counts", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    cfg = Config(width=args.width)
    for threads in args.thread_counts:
        set_threads(threads)
        rows = []
        for name, make in CASES.items():
            base = _side(cfg, _torch)
            ours = _side(cfg, make)
            t_base, t_ours = _alternate(base, ours, max(args.repeats, 30), args.warmup)
            rows.append(Row(name, t_base, t_ours, "torch clip + step",
                            {"overhead": f"{(t_ours - t_base) * 1e6:+.0f} us"}))
        print_table(f"per-step cost, {cfg}, {threads} thread(s), fastest of runs", rows,
                    args.json)


if __name__ == "__main__":
    main()
