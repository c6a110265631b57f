"""Distributed clipping and SyncBatchNorm on 2 gloo processes (CPU), against torch.

Run ``python benchmarks/distributed.py``: it starts 2 copies of itself (one per rank, joined
through a file store) and rank 0 prints the tables.

- clip_grad_norm_ on FSDP2-style gradients (DTensor, ``Shard(0)`` over 2 ranks) with the shapes
  of a 12-layer GPT-2 (width 256, vocabulary 8192; 148 tensors): torch's DTensor path vs
  traintech (local float64 partial sums, one packed all-reduce).
- SyncBatchNorm2d forward + backward, (16, 64, 28, 28) per rank: synchronized over 2 ranks vs a
  local (unsynchronized) BatchNorm2d; and in one process vs torch.nn.BatchNorm2d.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from _harness import Row, common_parser, print_table, set_threads, time_callable

WORLD = 2


def gpt2_shapes(layers: int = 12, width: int = 256, vocab: int = 8192) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = [(vocab, width), (1024, width)]
    for _ in range(layers):
        shapes += [(width,), (width,), (3 * width, width), (3 * width,), (width, width), (width,)]
        shapes += [(width,), (width,), (4 * width, width), (4 * width,), (width, 4 * width)]
        shapes += [(width,)]
    return shapes + [(width,), (width,)]


def bench_clip(args: object, rank: int) -> list[Row]:
    from torch.distributed.tensor import DTensor, Shard, init_device_mesh

    from traintech.clip import clip_grad_norm_

    mesh = init_device_mesh("cpu", (WORLD,))
    gen = torch.Generator().manual_seed(0)
    fulls = [torch.randn(s, generator=gen) * 1e-2 for s in gpt2_shapes()]
    originals = [
        DTensor.from_local(f.chunk(WORLD, 0)[rank].clone(), mesh, [Shard(0)]) for f in fulls
    ]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in originals]

    def refill() -> None:
        for p, g in zip(params, originals, strict=True):
            p.grad = g.clone()

    refill()
    theirs = torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
    refill()
    ours = clip_grad_norm_(params, 1.0)
    expected = torch.cat([f.flatten().double() for f in fulls]).norm()
    torch.testing.assert_close(ours.double(), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(theirs.full_tensor().double(), expected, rtol=1e-4, atol=0)
    reps = {"repeats": args.repeats, "warmup": args.warmup}  # type: ignore[attr-defined]
    base = time_callable(
        lambda: torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True), setup=refill, **reps
    )
    mine = time_callable(lambda: clip_grad_norm_(params, 1.0), setup=refill, **reps)
    n = sum(f.numel() for f in fulls)
    case = f"148 DTensor grads, {n / 1e6:.1f}M params, Shard(0) x {WORLD}"
    return [Row(case, base, mine, "torch clip_grad_norm_ (DTensor)")]


def bench_sync_bn(args: object) -> list[Row]:
    from traintech.norm import SyncBatchNorm

    reps = {"repeats": args.repeats, "warmup": args.warmup}  # type: ignore[attr-defined]
    x = torch.randn(16, 64, 28, 28, generator=torch.Generator().manual_seed(dist.get_rank()))
    x.requires_grad_(True)
    dy = torch.randn_like(x)
    ours, local = SyncBatchNorm(64), torch.nn.BatchNorm2d(64)

    def run(bn: torch.nn.Module) -> None:
        bn(x).backward(dy)

    base = time_callable(lambda: run(local), **reps)
    mine = time_callable(lambda: run(ours), **reps)
    rows = [Row(f"fwd+bwd (16,64,28,28)/rank, {WORLD} ranks", base, mine, "local BatchNorm2d")]
    return rows


def bench_single(args: object) -> list[Row]:
    from traintech.norm import SyncBatchNorm

    reps = {"repeats": args.repeats, "warmup": args.warmup}  # type: ignore[attr-defined]
    x = torch.randn(32, 64, 28, 28, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    dy = torch.randn_like(x)
    ours, theirs = SyncBatchNorm(64), torch.nn.BatchNorm2d(64)
    base = time_callable(lambda: theirs(x).backward(dy), **reps)
    mine = time_callable(lambda: ours(x).backward(dy), **reps)
    return [Row("fwd+bwd (32,64,28,28), one process", base, mine, "torch BatchNorm2d")]


def rank_main() -> None:
    args = common_parser(__doc__ or "").parse_args()
    rank = int(os.environ["TT_BENCH_RANK"])
    torch.set_num_threads(args.threads)
    store = os.environ["TT_BENCH_STORE"]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    clip_rows = bench_clip(args, rank)
    bn_rows = bench_sync_bn(args)
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        single_rows = bench_single(args)  # no process group any more: plain BatchNorm path
        set_threads(args.threads)
        print_table("clip_grad_norm_ under FSDP2 sharding (rank 0's time)", clip_rows, args.json)
        print_table("SyncBatchNorm over 2 gloo ranks (rank 0's time)", bn_rows)
        print_table("SyncBatchNorm without a process group", single_rows)


def main() -> None:
    if "TT_BENCH_RANK" in os.environ:
        rank_main()
        return
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, TT_BENCH_STORE=str(Path(tmp) / "store"), OMP_NUM_THREADS="1")
        procs = [
            subprocess.Popen([sys.executable, *sys.argv], env=dict(env, TT_BENCH_RANK=str(r)))
            for r in range(WORLD)
        ]
        codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a rank failed: exit codes {codes}")


if __name__ == "__main__":
    main()
