"""traintech.init against torch: init_model on a 12-layer, 768-wide Transformer, and the fills.

init_model baselines: ``reset_parameters()`` on every module that has one (torch's
Linear/LayerNorm; this misses ``nn.MultiheadAttention``'s in_proj, which torch resets in
``_reset_parameters``), and the same plus ``MultiheadAttention._reset_parameters()`` (every
parameter re-initialised, the same work init_model does). "overhead (meta)" is init_model on a
meta-device copy: tracing, planning and the report, with no sampling.

Fills: each ``traintech.init`` fill against its ``torch.nn.init`` namesake on the same shape with
a generator seeded alike (the results are checked equal before timing).

Every case alternates the two sides call by call and keeps the fastest of ``--repeats`` runs of
each; an A/A line times torch against itself the same way, so the noise of the machine is
visible. Runs at 1 and 2 torch threads unless ``--threads`` is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

import traintech.init as ti
from traintech.init import init_model
from traintech.init._followers import find_followers

from _harness import Row, common_parser, print_table, set_threads, synchronize


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
    report = init_model(model, generator=gen, warn_repeat=False)
    for record in report:
        if record.std and len(record.shape) == 2:
            param = model.get_parameter(record.name)
            got = param.detach()[:64].double().std().item()
            assert abs(got / record.std - 1) < 0.1, (record, got)
    assert any(r.init.startswith("kaiming") for r in report)


def fastest_alternating(fns: list[Callable[[], object]], repeats: int, device: str) -> list[float]:
    """Fastest time of each callable, called in turn ``repeats`` times (one warm-up round)."""
    best = [float("inf")] * len(fns)
    for round_ in range(repeats + 1):
        for i, fn in enumerate(fns):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if round_:
                best[i] = min(best[i], time.perf_counter() - start)
    return best


def model_rows(cfg: Config, repeats: int, device: str, threads: int) -> list[Row]:
    model = build(cfg, device)
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator(device=device).manual_seed(0)
    check(model, gen)
    meta = build(cfg, "meta")
    method = find_followers(model).method.split(" (")[0]
    overhead = fastest_alternating(
        [lambda: init_model(meta, generator=gen, warn_repeat=False)], repeats, "cpu"
    )[0]
    fns = [
        lambda: torch_reset(model, False),
        lambda: init_model(model, generator=gen, warn_repeat=False),
        lambda: torch_reset(model, True),
    ]
    base, ours, base_mha = fastest_alternating(fns, repeats, device)
    case = f"init_model, {cfg.model} {cfg.layers}x{cfg.width} ({n_params / 1e6:.1f}M), {threads}T"
    extra = {"activations by": method, "overhead (meta)": f"{overhead * 1e3:.1f} ms"}
    rows = [Row(case, base, ours, "reset_parameters", dict(extra))]
    if cfg.model == "nn.TransformerEncoder":
        rows.append(Row(case, base_mha, ours, "reset_parameters + MHA reset", dict(extra)))
    return rows


FILLS: list[tuple[str, tuple[int, ...], Callable[..., object], Callable[..., object], dict]] = [
    ("uniform_", (1024, 4096), ti.uniform_, nn.init.uniform_, {"a": -0.1, "b": 0.1}),
    ("normal_", (1024, 4096), ti.normal_, nn.init.normal_, {"std": 0.02}),
    ("constant_", (1024, 4096), ti.constant_, nn.init.constant_, {"val": 0.5}),
    ("eye_", (2048, 2048), ti.eye_, nn.init.eye_, {}),
    ("dirac_", (256, 256, 3, 3), ti.dirac_, nn.init.dirac_, {}),
    ("sparse_", (512, 512), ti.sparse_, nn.init.sparse_, {"sparsity": 0.1}),
    ("xavier_uniform_", (1024, 4096), ti.xavier_uniform_, nn.init.xavier_uniform_, {}),
    ("kaiming_normal_", (1024, 4096), ti.kaiming_normal_, nn.init.kaiming_normal_, {}),
]
_RANDOM = {"uniform_", "normal_", "xavier_uniform_", "kaiming_normal_"}


def fill_rows(repeats: int, threads: int) -> list[Row]:
    rows = []
    for name, shape, ours, theirs, kwargs in FILLS:
        a, b = torch.empty(shape), torch.empty(shape)
        if name in _RANDOM:
            ours_call = partial(ours, a, generator=torch.Generator().manual_seed(0), **kwargs)
            torch_call = partial(theirs, b, generator=torch.Generator().manual_seed(0), **kwargs)
            ours_call()
            torch_call()
        else:
            ours_call, torch_call = partial(ours, a, **kwargs), partial(theirs, b, **kwargs)
            torch.manual_seed(0)
            ours_call()
            torch.manual_seed(0)
            torch_call()
        assert torch.equal(a, b), name
        base, mine = fastest_alternating([torch_call, ours_call], repeats, "cpu")
        dims = "x".join(map(str, shape))
        rows.append(Row(f"{name} ({dims}), {threads}T", base, mine, f"nn.init.{name}"))
    return rows


def aa_row(repeats: int, threads: int) -> Row:
    """torch against itself, alternated the same way: how far 1.00x the noise moves."""
    w = torch.empty(1024, 4096)
    gen = torch.Generator().manual_seed(0)
    fns = [lambda: nn.init.uniform_(w, generator=gen), lambda: nn.init.uniform_(w, generator=gen)]
    first, second = fastest_alternating(fns, repeats, "cpu")
    return Row(f"A/A: nn.init.uniform_ vs itself (1024x4096), {threads}T", first, second)


def main() -> None:
    parser = common_parser(__doc__ or "")
    parser.set_defaults(repeats=7, threads=None)
    parser.add_argument("--no-models", action="store_true", help="only the fills")
    args = parser.parse_args()
    threads_list = [args.threads] if args.threads else [1, 2]
    rows: list[Row] = []
    for threads in threads_list:
        set_threads(threads)
        rows.append(aa_row(args.repeats * 3, threads))
        rows += fill_rows(args.repeats * 3, threads)
        if not args.no_models:
            for name in ("nn.TransformerEncoder", "own blocks"):
                rows += model_rows(Config(name), args.repeats, args.device, threads)
        rows.append(aa_row(args.repeats * 3, threads))
    print_table(
        "traintech.init vs torch, CPU fp32 (speedup = torch / ours; fastest of alternated runs)",
        rows,
        args.json,
    )


if __name__ == "__main__":
    main()
