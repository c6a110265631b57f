"""Train a small Transformer with FSDP2 (fully_shard) on CPU (gloo), guarded by ZClip.

Launch:  torchrun --standalone --nproc_per_node=2 examples/fsdp2_train.py --steps 200

Each rank holds a shard (rows of dim 0) of every parameter and gradient, as a DTensor. traintech
computes the norm of the whole, unsharded gradient (each rank reduces its shard to a partial
sum, one all-reduce adds them up), so ZClip takes the same decision on every rank and its
state stays identical across ranks. ``--nan-step K`` injects a NaN into rank 1's gradient
shard at step K: every rank skips that step.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.fsdp import fully_shard

from _transformer import TinyLM, parse_args, rank_batch
from traintech.clip import GuardedStep, ZClip
from traintech.init import init_model


def main() -> None:
    args = parse_args(__doc__)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    # The logits are a view (Linear on a 3-D input); we never modify them in place.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} must be divisible by the world size {world}")

    torch.manual_seed(0)
    model = TinyLM()
    # same on every rank; the learned positions keep their zero start (TinyLM sets it)
    init_model(model, {"pos": "skip"}, generator=torch.Generator().manual_seed(0))
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    clipper = ZClip(warmup_steps=10)
    guard = GuardedStep(optimizer, clipper)

    for step in range(args.steps):
        x, y = rank_batch(step, args.batch, rank, world)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step == args.nan_step and rank == 1:
            grad = model.head.weight.grad.to_local()
            if grad.numel():
                grad.view(-1)[0] = float("nan")
        report = guard.step()
        loss_avg = loss.detach().clone()
        dist.all_reduce(loss_avg)
        if rank == 0 and (step % 20 == 0 or step == args.steps - 1 or bool(report.skipped)):
            print(
                f"step {step:4d}  loss {loss_avg.item() / world:.4f}  "
                f"grad-norm {report.norm.item():.4f}  clip-coef {report.coef.item():.3f}  "
                f"skipped {bool(report.skipped)}"
            )

    # The clipper's state must be the same on every rank.
    states = [None] * world
    dist.all_gather_object(states, clipper.state_dict())
    if rank == 0:
        same = all(repr(s) == repr(states[0]) for s in states)
        print(
            f"steps taken {guard.steps_taken}, skipped {guard.steps_skipped}; "
            f"clipper state identical on all ranks: {same}"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
