"""Train a small Transformer with DDP on CPU (gloo), guarded by ZClip.

Launch:  torchrun --standalone --nproc_per_node=2 examples/ddp_train.py --steps 200

Each rank computes the gradient of its slice of the global batch; DDP averages the gradients,
so every rank holds the same gradient and the clipper sees the same norm on every rank. The
guarded step agrees across ranks on non-finite gradients (any rank sees NaN/Inf -> all skip),
so the replicas can never drift apart. ``--nan-step K`` injects a NaN into rank 1's gradient
at step K to show it.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from _transformer import TinyLM, parse_args, rank_batch
from traintech.clip import GuardedStep, ZClip
from traintech.init import init_model


def main() -> None:
    args = parse_args(__doc__)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} must be divisible by the world size {world}")

    torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    model = TinyLM()
    # the learned positions keep their zero start (TinyLM sets it)
    init_model(model, {"pos": "skip"}, generator=torch.Generator().manual_seed(0))
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=args.lr, weight_decay=0.01)
    guard = GuardedStep(optimizer, ZClip(warmup_steps=10))

    for step in range(args.steps):
        x, y = rank_batch(step, args.batch, rank, world)
        loss = F.cross_entropy(ddp(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step == args.nan_step and rank == 1:
            next(model.parameters()).grad[0, 0] = float("nan")
        report = guard.step()
        if rank == 0 and (step % 20 == 0 or step == args.steps - 1 or bool(report.skipped)):
            print(
                f"step {step:4d}  loss (rank 0) {loss.item():.4f}  "
                f"grad-norm {report.norm.item():.4f}  clip-coef {report.coef.item():.3f}  "
                f"skipped {bool(report.skipped)}"
            )

    # Replicas must be identical: compare a checksum of the parameters across ranks.
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    sums = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(sums, checksum)
    if rank == 0:
        same = all(torch.equal(s, sums[0]) for s in sums)
        print(
            f"steps taken {guard.steps_taken}, skipped {guard.steps_skipped}; "
            f"replicas identical: {same}"
        )
    # Release DDP (its reducer holds the process group) before destroying the group: with gloo,
    # destroying the group under a live DDP can abort at interpreter exit.
    del ddp, guard, optimizer
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
