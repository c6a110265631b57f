"""traintech.clip against torch: clip_grad_norm_, the guarded fused step, small tensors, fp16/bf16.

Cases (CPU, fp32 unless said, GPT-2 small's 148 parameter tensors = 124M elements):

(a) ``clip_grad_norm_`` vs ``torch.nn.utils.clip_grad_norm_(foreach=True)``, with the norm above
    the bound (every gradient rescaled) and below it (nothing to do), on GPT-2 small and on a
    small model (30 tensors, 151,500 parameters: per-call overhead), at each thread count of
    ``--thread-counts`` (default 1 and 2). An A/A line times torch against itself the same way:
    its distance from 1.00x is the noise of the machine.
(b)-(d) with ``--full`` only (at the first thread count):

(b) ``GuardedStep(AdamW(fused=True), NormClip)``: what clipping adds on top of the bare fused
    step, against one read of all gradients (a sum over a tensor of the same size), and what
    torch's clip adds on top of the same step.
(c) 2,000 small tensors: per-tensor overhead.
(d) fp16 / bf16 gradients.

Correctness is checked before timing. ``speedup`` is baseline time / our time (above 1: ours is
faster); ``time ratio`` is its inverse, the quantity the targets are written in.

Timing: the contenders run interleaved (A, B, A, B, ...) with the gradients restored before each
call, and the table shows the *minimum* over the repeats (``--stat median`` for the median): on a
shared machine the minimum is the least disturbed estimate of what the code costs.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch

from traintech.clip import GuardedStep, NormClip, clip_grad_norm_

from _harness import Row, common_parser, fmt_bytes, peak_memory_bytes, print_table, set_threads


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """The 148 parameter shapes of GPT-2 small (124M parameters, tied output head)."""
    d, ff, vocab, ctx = 768, 3072, 50257, 1024
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(12):
        shapes += [(d,), (d,)]  # ln_1
        shapes += [(d, 3 * d), (3 * d,)]  # attn.c_attn
        shapes += [(d, d), (d,)]  # attn.c_proj
        shapes += [(d,), (d,)]  # ln_2
        shapes += [(d, ff), (ff,)]  # mlp.c_fc
        shapes += [(ff, d), (d,)]  # mlp.c_proj
    shapes += [(d,), (d,)]  # ln_f
    return shapes


def small_model_shapes() -> list[tuple[int, ...]]:
    """30 tensors, 151,500 parameters: 15 Linear(100, 100) layers (weight and bias)."""
    return [(100, 100), (100,)] * 15


def make_params(shapes: list[tuple[int, ...]], dtype: torch.dtype, gen: torch.Generator):
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.zeros(shape, dtype=dtype))
        p.grad = (torch.randn(shape, generator=gen) * 1e-2).to(dtype)
        params.append(p)
    return params


def rel_err(value: torch.Tensor, ref: float) -> str:
    return f"{abs(float(value) - ref) / ref:.1e}"


def f64_norm(params) -> float:
    return math.sqrt(sum(float(p.grad.double().square().sum()) for p in params))


def interleaved(
    fns: dict[str, Callable[[], object]], args, setup: Callable[[], object] | None = None
) -> dict[str, float]:
    """Time each callable, interleaved, ``args.repeats`` times; return the min (or median).

    The order of the contenders rotates every round (A B C, B C A, C A B, ...), so none always
    runs right after the gradients were restored or right after another one (a position bias
    of a few percent on small models; the A/A line shows what is left of it).
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in range(args.warmup + args.repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            if setup is not None:
                setup()
            start = time.perf_counter()
            fn()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    pick = min if args.stat == "min" else statistics.median
    return {name: pick(ts) for name, ts in times.items()}


def restorer(tensors: list[torch.Tensor], saved: list[torch.Tensor]) -> Callable[[], None]:
    def restore() -> None:
        for t, s in zip(tensors, saved, strict=True):
            t.copy_(s)

    return restore


def bench_clip(args, dtype: torch.dtype, shapes, label: str, gen) -> list[Row]:
    params = make_params(shapes, dtype, gen)
    saved = [p.grad.clone() for p in params]
    ref = f64_norm(params)
    # correctness before timing: ours against the float64 formula, torch's norm for comparison
    base = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0, foreach=True)
    ours = clip_grad_norm_(params, 0.5 * ref)
    accurate = dtype == torch.float32
    torch.testing.assert_close(
        ours.double(),
        torch.tensor(ref, dtype=torch.float64),
        rtol=1e-6 if accurate else 1e-3,
        atol=0,
    )
    coef = 0.5 * ref / (ref + 1e-6)
    for p, g in zip(params, saved, strict=True):
        expected = (g.double() * coef).to(dtype)
        torch.testing.assert_close(p.grad, expected, rtol=1e-5 if accurate else 1e-2, atol=1e-7)
    errs = {"ours rel err": rel_err(ours, ref), "torch rel err": rel_err(base, ref)}
    rows = []
    restore = restorer([p.grad for p in params], saved)
    restore()
    mem_torch = peak_memory_bytes(lambda: torch.nn.utils.clip_grad_norm_(params, 0.5 * ref))
    restore()
    mem_ours = peak_memory_bytes(lambda: clip_grad_norm_(params, 0.5 * ref))
    errs["peak mem torch/ours"] = f"{fmt_bytes(mem_torch)} / {fmt_bytes(mem_ours)}"
    for case, factor in [("clipped", 0.5), ("not clipped", 2.0)]:
        max_norm = factor * ref
        t = interleaved(
            {
                "torch": lambda m=max_norm: torch.nn.utils.clip_grad_norm_(params, m, foreach=True),
                "ours": lambda m=max_norm: clip_grad_norm_(params, m),
                "torch A/A": lambda m=max_norm: torch.nn.utils.clip_grad_norm_(
                    params, m, foreach=True
                ),
            },
            args,
            restore,
        )
        t_base, t_ours, t_aa = t["torch"], t["ours"], t["torch A/A"]
        rows.append(
            Row(
                f"{label}, {case}",
                t_base,
                t_ours,
                "torch clip_grad_norm_(foreach)",
                {**errs, "time ratio": f"{t_ours / t_base:.2f}"},
            )
        )
        rows.append(
            Row(
                f"{label}, {case}: A/A (torch vs torch)",
                t_base,
                t_aa,
                "torch clip_grad_norm_(foreach)",
                {"time ratio": f"{t_aa / t_base:.2f}"},
            )
        )
    return rows


def bench_guarded(args, shapes, gen) -> list[Row]:
    params = make_params(shapes, torch.float32, gen)
    grads = [p.grad for p in params]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    ref_norm = f64_norm(params)
    guard = GuardedStep(opt, NormClip(0.5 * ref_norm))
    saved = [g.clone() for g in grads]
    guard.step()  # first step initialises the optimizer state (plain path: rescales grads)
    for g, s in zip(grads, saved, strict=True):
        g.copy_(s)
    report = guard.step()
    assert report.fused and not bool(report.skipped)
    torch.testing.assert_close(
        report.coef.double(), torch.tensor(0.5, dtype=torch.float64), rtol=1e-5, atol=0
    )

    restore = restorer(grads, saved)

    def torch_clip_step() -> None:
        torch.nn.utils.clip_grad_norm_(params, 0.5 * ref_norm, foreach=True)
        opt.step()

    flat = torch.randn(sum(g.numel() for g in grads), generator=gen)
    t = interleaved(
        {"bare": opt.step, "guard": guard.step, "torch": torch_clip_step, "read": flat.sum},
        args,
        restore,
    )
    t_bare, t_guard, t_torch, t_read = t["bare"], t["guard"], t["torch"], t["read"]
    ours_over = t_guard - t_bare
    torch_over = t_torch - t_bare
    return [
        Row(
            "clip overhead on fused AdamW step (GPT-2)",
            torch_over,
            ours_over,
            "torch clip + fused step",
            {
                "bare step": f"{t_bare * 1e3:.1f} ms",
                "one read of grads": f"{t_read * 1e3:.1f} ms",
                "ours / read": f"{ours_over / t_read:.2f}",
                "ours / torch": f"{ours_over / torch_over:.2f}",
            },
        )
    ]


def main() -> None:
    parser = common_parser(__doc__ or "")
    parser.add_argument("--stat", choices=["min", "median"], default="min")
    parser.add_argument(
        "--thread-counts", default="1,2", help="comma-separated torch thread counts (default 1,2)"
    )
    parser.add_argument(
        "--small-repeats", type=int, default=300, help="timed repeats for the small model"
    )
    parser.add_argument("--full", action="store_true", help="also run cases (b)-(d)")
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    gpt2 = gpt2_small_shapes()
    assert len(gpt2) == 148 and sum(math.prod(s) for s in gpt2) == 124_439_808
    small = small_model_shapes()
    assert len(small) == 30 and sum(math.prod(s) for s in small) == 151_500
    small_args = argparse.Namespace(**{**vars(args), "repeats": args.small_repeats, "warmup": 20})
    counts = [int(n) for n in args.thread_counts.split(",")]
    for threads in counts:
        set_threads(threads)
        rows = bench_clip(args, torch.float32, gpt2, "GPT-2 small fp32", gen)
        rows += bench_clip(small_args, torch.float32, small, "small model (30 x, 151k) fp32", gen)
        print_table(f"(a) clip_grad_norm_, {threads} thread(s)", rows, args.json)
    if not args.full:
        return
    set_threads(counts[0])
    print_table("(b) guarded fused AdamW step", bench_guarded(args, gpt2, gen))
    many = [(256,)] * 2000
    rows = bench_clip(args, torch.float32, many, "2000 x 256 fp32", gen)
    for row in rows:
        row.extra["ours us/tensor"] = f"{row.ours_s / 2000 * 1e6:.2f}"
        row.extra["torch us/tensor"] = f"{row.baseline_s / 2000 * 1e6:.2f}"
    print_table("(c) per-tensor overhead, 2,000 small tensors", rows)
    low = []
    for dtype, name in [(torch.float16, "fp16"), (torch.bfloat16, "bf16")]:
        low += bench_clip(args, dtype, gpt2, name, gen)
    print_table("(d) fp16 / bf16 gradients, GPT-2 small", low)


if __name__ == "__main__":
    main()
