"""init_model on a 12-layer, 768-wide Transformer (~85M parameters) against torch's own resets.

Baselines: ``reset_parameters()`` on every module that has one (torch's Linear/LayerNorm; this
misses ``nn.MultiheadAttention``'s in_proj, which torch resets in ``_reset_parameters``), and
the same plus ``MultiheadAttention._reset_parameters()`` (every parameter re-initialised, the
same work init_model does). "overhead" is init_model on a meta-device copy: tracing, planning
and the report, with no sampling.
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from traintech.init import init_model
from traintech.init._followers import find_followers

from _harness import Row, common_parser, print_table, set_threads, time_callable


@dataclass(frozen=True)
class Config:
    model: str  # "nn.TransformerEncoder" (untraceable: module order) or "own blocks" (fx)
    layers: int = 12
    width: int = 768
    heads: int = 12


class Block(nn.Module):
    """Pre-LN Transformer block from Linears, traceable by torch.fx."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=-1)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def build(cfg: Config, device: str = "cpu") -> nn.Module:
    with torch.device(device):
        if cfg.model == "nn.TransformerEncoder":
            layer = nn.TransformerEncoderLayer(
                cfg.width, cfg.heads, 4 * cfg.width, batch_first=True, activation="gelu"
            )
            return nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        return nn.Sequential(*[Block(cfg.width, cfg.heads) for _ in range(cfg.layers)])


def torch_reset(model: nn.Module, include_mha: bool) -> None:
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        elif include_mha and isinstance(module, nn.MultiheadAttention):
            module._reset_parameters()


def check(model: nn.Module, gen: torch.Generator) -> None:
    report = init_model(model, generator=gen)
    for record in report:
        if record.std and len(record.shape) == 2:
            param = model.get_parameter(record.name)
            got = param.detach()[:64].double().std().item()
            assert abs(got / record.std - 1) < 0.1, (record, got)
    assert any(r.init.startswith("kaiming") for r in report)


def interleaved(fns: list, repeats: int, warmup: int, device: str) -> list[float]:
    """Median time of each callable, measured round-robin so that load drifts hit all alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            times[i].append(time_callable(fn, repeats=1, warmup=warmup, device=device))
        warmup = 0
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = common_parser(__doc__ or "")
    parser.set_defaults(repeats=7, warmup=1)
    args = parser.parse_args()
    set_threads(args.threads)
    rows = []
    for (name,) in itertools.product(["nn.TransformerEncoder", "own blocks"]):
        cfg = Config(name)
        model = build(cfg, args.device)
        n_params = sum(p.numel() for p in model.parameters())
        gen = torch.Generator(device=args.device).manual_seed(0)
        check(model, gen)
        meta = build(cfg, "meta")
        start = time.perf_counter()
        method = find_followers(model).method
        trace_s = time.perf_counter() - start
        overhead = time_callable(
            lambda m=meta, g=gen: init_model(m, generator=g), repeats=args.repeats, warmup=1
        )
        fns = [
            lambda m=model, g=gen: init_model(m, generator=g),
            lambda m=model: torch_reset(m, False),
            lambda m=model: torch_reset(m, True),
        ]
        ours, base, base_mha = interleaved(fns, args.repeats, args.warmup, args.device)
        extra = {
            "params": f"{n_params / 1e6:.1f}M",
            "activations by": method.split(" (")[0],
            "trace": f"{trace_s * 1e3:.1f} ms",
            "overhead (meta)": f"{overhead * 1e3:.1f} ms",
            "ours / torch": f"{ours / base:.2f}x",
        }
        rows.append(
            Row(f"{name}, {cfg.layers}x{cfg.width}", base, ours, "reset_parameters", dict(extra))
        )
        if name == "nn.TransformerEncoder":
            extra["ours / torch"] = f"{ours / base_mha:.2f}x"
            rows.append(
                Row(
                    f"{name}, {cfg.layers}x{cfg.width}",
                    base_mha,
                    ours,
                    "reset_parameters + MHA._reset_parameters",
                    dict(extra),
                )
            )
    print_table(
        "init_model vs torch reset, CPU (speedup = torch / ours; target: ours / torch <= 1.2x)",
        rows,
        args.json,
    )


if __name__ == "__main__":
    main()
