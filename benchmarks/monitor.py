"""Overhead of traintech.monitor on a small Transformer training step (CPU, 1 and 2 threads).

Times a full step (zero_grad, forward, cross-entropy, backward, AdamW step) without a monitor,
with ``Monitor`` at default settings (logging to JSONL, CSV and TensorBoard in a temporary
folder), with activation statistics every 10 steps, and the cost of locating NaN/Inf origins
(``trace_nonfinite=True``) against ``torch.autograd.detect_anomaly``.

Variants run in alternating blocks of ``--block`` steps (a multiple of 10, so every block holds
the same share of sampled steps). Each block is timed twice: by the CPU time of the training
thread (``time.thread_time``; torch runs on that one thread and the monitor starts no thread
of its own), which a busy machine barely disturbs, and by wall time. The table shows the median
block of each, per step; at 1 thread the ratios use CPU time, at more threads wall time (the
training thread's CPU time no longer counts the work of torch's other threads). An A/A row times
a second, identical step without a monitor, so the noise is visible.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from traintech.monitor import Monitor

from _harness import Row, common_parser, print_table, set_threads


@dataclass(frozen=True)
class Config:
    vocab: int = 512
    d_model: int = 128
    nhead: int = 4
    layers: int = 2
    ff: int = 256
    batch: int = 16
    seq: int = 64


class TinyLM(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.emb = nn.Embedding(cfg.vocab, cfg.d_model)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.nhead, cfg.ff, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.head = nn.Linear(cfg.d_model, cfg.vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.emb(tokens)))


def make_step(
    model: nn.Module, data: torch.Tensor, monitor_kw: dict | None, anomaly: bool, log_dir: str
) -> tuple[Callable[[], None], Monitor | None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = None if monitor_kw is None else Monitor(model, opt, log_dir, **monitor_kw)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        x, y = data[:, :-1], data[:, 1:]
        if anomaly:
            with torch.autograd.detect_anomaly(check_nan=True):
                loss = loss_fn(model(x).flatten(0, 1), y.flatten())
                loss.backward()
        else:
            loss = loss_fn(model(x).flatten(0, 1), y.flatten())
            loss.backward()
        opt.step()
        if mon is not None:
            mon.step(loss=loss)

    return step, mon


def main() -> None:
    parser = common_parser(__doc__ or "")
    parser.add_argument("--block", type=int, default=10, help="steps per timed block")
    parser.add_argument(
        "--thread-counts", default="1,2", help="comma-separated torch thread counts (default 1,2)"
    )
    args = parser.parse_args()
    for threads in [int(t) for t in args.thread_counts.split(",")]:
        set_threads(threads)
        run(args, threads)


def run(args, threads: int) -> None:  # noqa: ANN001
    """Time every variant at ``threads`` torch threads and print one table."""
    cfg = Config()
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    base_model = TinyLM(cfg)
    data = torch.randint(0, cfg.vocab, (cfg.batch, cfg.seq + 1), generator=gen)
    variants: dict[str, tuple[dict | None, bool]] = {
        "no monitor": (None, False),
        "A/A: no monitor again": (None, False),
        "monitor defaults": ({}, False),
        "monitor, activations every 10": ({"activation_every": 10}, False),
        "monitor, trace_nonfinite": ({"trace_nonfinite": True}, False),
        "detect_anomaly": (None, True),
    }
    with tempfile.TemporaryDirectory() as tmp:
        steps, monitors = {}, []
        for i, (name, (kw, anomaly)) in enumerate(variants.items()):
            step, mon = make_step(copy.deepcopy(base_model), data, kw, anomaly, f"{tmp}/{i}")
            steps[name] = step
            if mon is not None:
                monitors.append(mon)

        # Correctness first: the monitor's global norm equals torch's total norm.
        check_model = copy.deepcopy(base_model)
        check_step, check_mon = make_step(check_model, data, {}, False, f"{tmp}/check")
        check_step()
        assert check_mon is not None
        ref = torch.nn.utils.get_total_norm([p.grad for p in check_model.parameters()])
        got = check_mon.history[-1]["grad_norm"]
        assert abs(got - ref.item()) <= 1e-4 * ref.item(), (got, ref.item())
        check_mon.close()

        for step in steps.values():
            for _ in range(args.warmup * 2):
                step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        walls: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.repeats):
            for name, step in steps.items():
                start, wall = time.thread_time(), time.perf_counter()
                for _ in range(args.block):
                    step()
                times[name].append((time.thread_time() - start) / args.block)
                walls[name].append((time.perf_counter() - wall) / args.block)
        for mon in monitors:
            mon.close()

    cpu = {name: statistics.median(t) for name, t in times.items()}
    wall = {name: statistics.median(t) for name, t in walls.items()}
    med = cpu if threads == 1 else wall
    base = med["no monitor"]
    targets = {
        "A/A: no monitor again": "",
        "monitor defaults": "<= 3%",
        "monitor, activations every 10": "<= 10%",
        "monitor, trace_nonfinite": "small fraction of detect_anomaly",
        "detect_anomaly": "",
    }
    rows = [
        Row(
            name,
            base,
            med[name],
            "no monitor",
            {
                "overhead (CPU)": f"{(cpu[name] / cpu['no monitor'] - 1) * 100:+.1f}%",
                "overhead (wall)": f"{(wall[name] / wall['no monitor'] - 1) * 100:+.1f}%",
                "target": targets[name],
            },
        )
        for name in targets
    ]
    clock = "CPU time" if threads == 1 else "wall time"
    title = (
        f"monitor overhead ({clock} per step), {threads} thread(s), {cfg} "
        f"({args.repeats} x {args.block} steps)"
    )
    print_table(title, rows, args.json)
    trace = med["monitor, trace_nonfinite"] - base
    anomaly = med["detect_anomaly"] - base
    print(
        f"\nNaN-origin cost: trace_nonfinite adds {trace * 1e3:.2f} ms/step, detect_anomaly adds "
        f"{anomaly * 1e3:.2f} ms/step: trace costs {trace / anomaly:.1%} of detect_anomaly's "
        "overhead"
    )


if __name__ == "__main__":
    main()
