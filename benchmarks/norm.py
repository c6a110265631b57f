"""traintech.norm against torch: forward + backward time and peak memory (CPU, fp32 by default).

Cases (issues #6, #13): LayerNorm / RMSNorm at (8, 512, 1024); BatchNorm2d / GroupNorm /
InstanceNorm2d at (32, 64, 56, 56); fused residual add + RMSNorm / LayerNorm against torch's add
followed by the torch layer. Each pair is checked for equal outputs and gradients before it is
timed; both sides run alternately and the fastest of ``--repeats`` runs is shown, at every thread
count of ``--thread-counts`` (1 and 2 by default), with an A/A line (torch's RMSNorm against
itself) that shows the run's noise.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import traintech.norm as tn

from _harness import (
    Row,
    common_parser,
    fmt_bytes,
    peak_memory_bytes,
    print_table,
    set_threads,
    time_callable,
)

Layer = Callable[[], nn.Module]


@dataclass(frozen=True)
class Config:
    name: str
    shape: tuple[int, ...]
    baseline_name: str
    baseline: Layer
    ours: Layer
    fused: bool = False  # forward(x, residual) -> (y, h)


def _configs() -> list[Config]:
    seq, img = (8, 512, 1024), (32, 64, 56, 56)
    ln, rms = (lambda: nn.LayerNorm(1024)), (lambda: nn.RMSNorm(1024))
    return [
        Config("LayerNorm", seq, "torch LayerNorm", ln, lambda: tn.LayerNorm(1024)),
        Config("RMSNorm", seq, "torch RMSNorm", rms, lambda: tn.RMSNorm(1024)),
        Config("RMSNorm vs LayerNorm", seq, "torch LayerNorm", ln, lambda: tn.RMSNorm(1024)),
        Config("BatchNorm2d (train)", img, "torch BatchNorm2d", lambda: nn.BatchNorm2d(64),
               lambda: tn.BatchNorm2d(64)),
        Config("GroupNorm(32, 64)", img, "torch GroupNorm", lambda: nn.GroupNorm(32, 64),
               lambda: tn.GroupNorm(32, 64)),
        Config("InstanceNorm2d(64, affine)", img, "torch InstanceNorm2d",
               lambda: nn.InstanceNorm2d(64, affine=True),
               lambda: tn.InstanceNorm2d(64, affine=True)),
        Config("add + RMSNorm", seq, "add, torch RMSNorm", rms,
               lambda: tn.FusedAddRMSNorm(1024), fused=True),
        Config("add + LayerNorm", seq, "add, torch LayerNorm", ln,
               lambda: tn.FusedAddLayerNorm(1024), fused=True),
    ]  # fmt: skip


def _step(layer: nn.Module, fused: bool, ours: bool, x: torch.Tensor, r: torch.Tensor,
          gy: torch.Tensor, gh: torch.Tensor) -> Callable[[], None]:  # fmt: skip
    """One forward + backward; the residual stream's gradient flows in for the fused cases."""

    def run() -> None:
        x.grad = r.grad = None
        for p in layer.parameters():
            p.grad = None
        if not fused:
            layer(x).backward(gy)
        elif ours:
            y, h = layer(x, r)
            torch.autograd.backward((y, h), (gy, gh))
        else:
            h = x + r
            y = layer(h)
            torch.autograd.backward((y, h), (gy, gh))

    return run


def _paired_min(run_base, run_ours, repeats, warmup, device):  # noqa: ANN001, ANN202
    """Fastest times of both over ``repeats`` alternating runs (load changes hit both alike)."""
    for _ in range(warmup):
        run_base()
        run_ours()
    base: list[float] = []
    ours: list[float] = []
    for i in range(repeats):  # ABBA order: neither side always runs right after the other
        pair = [(run_base, base), (run_ours, ours)]
        for fn, times in pair if i % 2 == 0 else pair[::-1]:
            times.append(time_callable(fn, repeats=1, warmup=0, device=device))
    return min(base), min(ours)


def _check(cfg: Config, base: nn.Module, ours: nn.Module, x, r, gy, gh, tol) -> None:  # noqa: ANN001
    """Outputs and every gradient of ours equal the baseline's before anything is timed."""
    grads = []
    for layer, is_ours in ((base, False), (ours, True)):
        _step(layer, cfg.fused, is_ours, x, r, gy, gh)()
        grads.append([x.grad.clone(), *(p.grad.clone() for p in layer.parameters())])
    if cfg.name != "RMSNorm vs LayerNorm":
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, rtol=tol, atol=10 * tol)


def main() -> None:
    parser = common_parser(__doc__ or "")
    parser.add_argument("--dtypes", default="fp32", help="comma list of fp32, bf16 (default fp32)")
    parser.add_argument(
        "--thread-counts", default="1,2", help="comma list of torch thread counts (default 1,2)"
    )
    parser.set_defaults(repeats=30)
    args = parser.parse_args()
    dtypes = [{"fp32": torch.float32, "bf16": torch.bfloat16}[d] for d in args.dtypes.split(",")]
    for threads in [int(t) for t in args.thread_counts.split(",")]:
        set_threads(threads)
        gen = torch.Generator().manual_seed(0)
        rows = []
        for cfg, dtype in itertools.product(_configs(), dtypes):
            rows.append(_measure(cfg, dtype, gen, args, aa=False))
            if cfg.name in ("LayerNorm", "RMSNorm"):  # A/A: torch vs itself, this run's noise
                rows.append(_measure(cfg, dtype, gen, args, aa=True))
        print_table(
            f"traintech.norm vs torch ({args.device}, forward + backward, {threads} thread(s), "
            f"fastest of {args.repeats} alternating runs)",
            rows,
            args.json,
        )


def _measure(cfg: Config, dtype: torch.dtype, gen: torch.Generator, args, aa: bool) -> Row:  # noqa: ANN001
    """One table row: the baseline and ours (or the baseline again for the A/A line)."""
    x = torch.randn(cfg.shape, generator=gen, dtype=dtype, device=args.device)
    x.requires_grad_()
    r = torch.randn(cfg.shape, generator=gen, dtype=dtype, device=args.device)
    r.requires_grad_()
    gy = torch.randn(cfg.shape, generator=gen, dtype=dtype, device=args.device)
    gh = torch.randn(cfg.shape, generator=gen, dtype=dtype, device=args.device)
    base = cfg.baseline().to(device=args.device, dtype=dtype)
    ours = (cfg.baseline if aa else cfg.ours)().to(device=args.device, dtype=dtype)
    _check(cfg, base, ours, x, r, gy, gh, 1e-4 if dtype == torch.float32 else 5e-2)
    run_base = _step(base, cfg.fused, False, x, r, gy, gh)
    run_ours = _step(ours, cfg.fused, not aa, x, r, gy, gh)
    t_base, t_ours = _paired_min(run_base, run_ours, args.repeats, args.warmup, args.device)
    m_base = peak_memory_bytes(run_base, args.device)
    m_ours = peak_memory_bytes(run_ours, args.device)
    name = f"A/A: {cfg.baseline_name} vs itself" if aa else cfg.name
    return Row(
        f"{name} {tuple(cfg.shape)} {str(dtype)[6:]} fwd+bwd",
        t_base,
        t_ours,
        cfg.baseline_name,
        {
            "baseline peak": fmt_bytes(m_base),
            "ours peak": fmt_bytes(m_ours),
            "memory saved": fmt_bytes(m_base - m_ours),
        },
    )


if __name__ == "__main__":
    main()
