"""Total gradient norm: traintech.clip's core against torch.nn.utils.get_total_norm."""

from __future__ import annotations

import torch

from traintech.clip._norm import total_norm

from _harness import Row, common_parser, print_table, set_threads, time_callable


def main() -> None:
    args = common_parser(__doc__ or "").parse_args()
    set_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n_tensors, size in [(148, 840_000), (2000, 256)]:
        grads = [torch.randn(size, generator=gen) for _ in range(n_tensors)]
        ours = total_norm(grads, 2.0)
        ref = torch.nn.utils.get_total_norm(grads, 2.0, foreach=True)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=0)
        base_t = time_callable(
            lambda g=grads: torch.nn.utils.get_total_norm(g, 2.0, foreach=True),
            repeats=args.repeats,
            warmup=args.warmup,
        )
        ours_t = time_callable(
            lambda g=grads: total_norm(g, 2.0), repeats=args.repeats, warmup=args.warmup
        )
        rows.append(Row(f"{n_tensors} x {size} fp32", base_t, ours_t, "get_total_norm(foreach)"))
    print_table("total gradient norm (2-norm)", rows, args.json)


if __name__ == "__main__":
    main()
