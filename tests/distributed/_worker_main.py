"""Entry point of one rank launched by the ``run_ranks`` fixture (see conftest.py).

Usage: ``python _worker_main.py RANK WORLD_SIZE STORE_FILE OUT_DIR MODULE:FUNCTION KWARGS_FILE``.
Initializes a gloo process group through a file store (no port to pick), calls
``FUNCTION(rank, world_size, **kwargs)`` from ``MODULE`` (a file next to this one) and saves its
return value to ``OUT_DIR/rank{RANK}.pt``; on an exception writes the traceback to
``OUT_DIR/rank{RANK}.err`` and exits with status 1.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import torch
import torch.distributed as dist


def main() -> int:
    rank, world_size = int(sys.argv[1]), int(sys.argv[2])
    store_file, out_dir, target, kwargs_file = sys.argv[3:7]
    torch.set_num_threads(1)
    try:
        module_name, function_name = target.split(":")
        function = getattr(importlib.import_module(module_name), function_name)
        kwargs = torch.load(kwargs_file, weights_only=False)
        dist.init_process_group(
            "gloo", init_method=f"file://{store_file}", rank=rank, world_size=world_size
        )
        try:
            result = function(rank, world_size, **kwargs)
            # Every rank is done with its collectives before any rank tears gloo down (a rank
            # destroying the group while a peer's gloo thread still talks to it aborts the peer).
            dist.barrier()
        finally:
            dist.destroy_process_group()
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
