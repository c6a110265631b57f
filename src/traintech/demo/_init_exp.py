"""Experiment 1, initialization: does the signal survive depth, and does the net then train?

Three measurements on scikit-learn's digits:

1. activation std layer by layer through a 50-layer, width-256 ReLU MLP at initialization, for
   He, Xavier, LeCun, orthogonal (ReLU gain), LSUV, ``init_model`` ("auto") and N(0, 0.01);
2. test accuracy of a 20-layer, width-256 ReLU MLP trained with SGD from each init;
3. the tanh case: gradient flow (norm of the first layer's weight gradient over the last's) in a
   50-layer tanh MLP, and the accuracy after training a 20-layer tanh MLP, Xavier vs He.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from traintech.demo._common import (
    ExperimentResult,
    Tick,
    accuracy,
    effect,
    mean,
    mlp,
    train_classifier,
)
from traintech.demo._data import load_digits
from traintech.demo._impl import implementation_sources
from traintech.demo._verdict import Check, Claim
from traintech.init import (
    calculate_gain,
    init_model,
    kaiming_normal_,
    lecun_normal_,
    lsuv_,
    orthogonal_,
    xavier_normal_,
)

INITS = ("he", "xavier", "lecun", "orthogonal", "lsuv", "auto", "small")
LABELS = {
    "he": "He (kaiming_normal_)",
    "xavier": "Xavier (xavier_normal_)",
    "lecun": "LeCun (lecun_normal_)",
    "orthogonal": "orthogonal_ (ReLU gain)",
    "lsuv": "LSUV (lsuv_)",
    "auto": 'init_model(scheme="auto")',
    "small": "N(0, 0.01)",
}


@dataclass(frozen=True)
class InitConfig:
    """Settings of the initialization experiment."""

    profile_depth: int = 50
    width: int = 256
    profile_batch: int = 512
    train_depth: int = 20
    train_inits: tuple[str, ...] = INITS
    steps: int = 250
    batch_size: int = 64
    lr: float = 0.005
    tanh_steps: int = 250

    @classmethod
    def quick(cls) -> InitConfig:
        """The ``--quick`` settings."""
        return cls(
            profile_batch=256,
            train_inits=("he", "xavier", "small"),
            steps=150,
            tanh_steps=100,
        )


def _apply_init(model: nn.Sequential, scheme: str, batch: Tensor, gen: torch.Generator) -> None:
    linears = [m for m in model if isinstance(m, nn.Linear)]
    if scheme == "lsuv":
        lsuv_(model, batch, generator=gen)
        return
    if scheme == "auto":
        init_model(model, scheme="auto", generator=gen)
        return
    init: Callable[[Tensor], object]
    if scheme == "he":
        init = lambda w: kaiming_normal_(w, nonlinearity="relu", generator=gen)  # noqa: E731
    elif scheme == "xavier":
        init = lambda w: xavier_normal_(w, generator=gen)  # noqa: E731
    elif scheme == "lecun":
        init = lambda w: lecun_normal_(w, generator=gen)  # noqa: E731
    elif scheme == "orthogonal":
        gain = calculate_gain("relu")
        init = lambda w: orthogonal_(w, gain=gain, generator=gen)  # noqa: E731
    elif scheme == "small":
        init = lambda w: w.normal_(0.0, 0.01, generator=gen)  # noqa: E731
    else:
        raise ValueError(f"scheme must be one of {INITS}, got {scheme!r}")
    with torch.no_grad():
        for layer in linears:
            init(layer.weight)
            layer.bias.zero_()


def _tanh_inits(gen: torch.Generator) -> dict[str, Callable[[Tensor], object]]:
    return {
        "xavier": lambda w: xavier_normal_(w, generator=gen),
        "he": lambda w: kaiming_normal_(w, nonlinearity="relu", generator=gen),
    }


def activation_stds(model: nn.Sequential, batch: Tensor) -> list[float]:
    """Std of each hidden activation (every ReLU/Tanh output), first to last.

    The network runs in float32 as in training; each std is computed in float64 from the
    float32 activations, so a tiny but nonzero std is not rounded to 0 by the statistic itself
    (``traintech.init.variance_profile`` accumulates in float32, where the variance of
    activations below about 1e-19 underflows). A std of exactly 0 means the activations
    themselves underflowed.
    """
    stds: list[float] = []
    h = batch
    with torch.no_grad():
        for module in model:
            h = module(h)
            if isinstance(module, (nn.ReLU, nn.Tanh)):
                stds.append(float(h.double().std(unbiased=False)))
    return stds


def gradient_ratio(model: nn.Sequential, x: Tensor, y: Tensor) -> float:
    """Norm of the first hidden layer's weight gradient over the last hidden layer's."""
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    first, last = linears[0].weight.grad, linears[-2].weight.grad
    assert first is not None and last is not None
    ratio = float(first.norm() / last.norm())
    model.zero_grad(set_to_none=True)
    return ratio


def run_init(cfg: InitConfig, seeds: list[int], tick: Tick) -> ExperimentResult:
    """Run the initialization experiment for each seed; return numbers and verdicts."""
    digits = load_digits()
    x_train, x_test = digits.standardize(digits.x_train), digits.standardize(digits.x_test)
    per_seed: dict[str, list] = {"profile": [], "accuracy": [], "tanh": []}
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        batch = x_train[torch.randperm(len(x_train), generator=gen)[: cfg.profile_batch]]
        profile = {}
        for scheme in INITS:
            model = mlp(cfg.profile_depth, cfg.width, nn.ReLU)
            _apply_init(model, scheme, batch, gen)
            profile[scheme] = activation_stds(model, batch)
        tick()
        per_seed["profile"].append(profile)

        acc = {}
        for scheme in cfg.train_inits:
            model = mlp(cfg.train_depth, cfg.width, nn.ReLU)
            _apply_init(model, scheme, batch, gen)
            train_classifier(
                model,
                x_train,
                digits.y_train,
                steps=cfg.steps,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                generator=gen,
                tick=tick,
            )
            acc[scheme] = accuracy(model, x_test, digits.y_test)
        per_seed["accuracy"].append(acc)

        tanh: dict[str, float] = {}
        inits = _tanh_inits(gen)
        y_batch = digits.y_train[: cfg.profile_batch]
        for name, init in inits.items():
            for depth, key in ((cfg.profile_depth, "grad_ratio"), (cfg.train_depth, "accuracy")):
                model = mlp(depth, cfg.width, nn.Tanh)
                with torch.no_grad():
                    for layer in (m for m in model if isinstance(m, nn.Linear)):
                        init(layer.weight)
                        layer.bias.zero_()
                if key == "grad_ratio":
                    tanh[f"{name}_grad_ratio"] = gradient_ratio(
                        model, x_train[: cfg.profile_batch], y_batch
                    )
                else:
                    train_classifier(
                        model,
                        x_train,
                        digits.y_train,
                        steps=cfg.tanh_steps,
                        batch_size=cfg.batch_size,
                        lr=cfg.lr,
                        generator=gen,
                        tick=tick,
                    )
                    tanh[f"{name}_accuracy"] = accuracy(model, x_test, digits.y_test)
        per_seed["tanh"].append(tanh)

    depth = cfg.profile_depth
    last_std = {s: mean([p[s][-1] for p in per_seed["profile"]]) for s in INITS}
    first_std = {s: mean([p[s][0] for p in per_seed["profile"]]) for s in INITS}
    mean_profile = {
        s: [mean([p[s][i] for p in per_seed["profile"]]) for i in range(depth)] for s in INITS
    }
    acc_mean = {s: mean([a[s] for a in per_seed["accuracy"]]) for s in cfg.train_inits}
    tanh_mean = {k: mean([t[k] for t in per_seed["tanh"]]) for k in per_seed["tanh"][0]}
    numbers = {
        "activation_std_by_layer": mean_profile,
        "activation_std_first_layer": first_std,
        "activation_std_last_layer": last_std,
        "test_accuracy": acc_mean,
        "tanh": tanh_mean,
        "per_seed": per_seed,
        "seeds": seeds,
    }
    claims = _claims(cfg, last_std, first_std, acc_mean, tanh_mean, per_seed)
    return ExperimentResult(
        name="init",
        title="Initialization: activation scale through depth, and trainability",
        settings=asdict(cfg),
        numbers=numbers,
        claims=claims,
        sources=implementation_sources("init"),
    )


def _ratio(last: float, first: float) -> float:
    return last / first if first > 0 else math.nan


def _claims(
    cfg: InitConfig,
    last: dict[str, float],
    first: dict[str, float],
    acc: dict[str, float],
    tanh: dict[str, float],
    per_seed: dict[str, list[Any]],
) -> list[Claim]:
    d = cfg.profile_depth
    log_gap = [
        math.log10(p["he"][-1]) - math.log10(p["xavier"][-1])
        if p["he"][-1] > 0 and p["xavier"][-1] > 0
        else math.inf
        for p in per_seed["profile"]
    ]
    depth = Claim(
        key="init.depth",
        experiment="init",
        text=f"He init keeps the signal alive through a deep ReLU net ({d} layers), where "
        "Xavier and small-Gaussian init let it vanish",
        compared=f"activation std at layer {d} relative to layer 1 at initialization, He vs "
        f"Xavier vs N(0, 0.01): He keeps {_ratio(last['he'], first['he']):.4g}, Xavier "
        f"{_ratio(last['xavier'], first['xavier']):.4g}: use He (kaiming) init for ReLU nets.",
        checks=[
            Check(f"He std layer {d} / layer 1", _ratio(last["he"], first["he"]), ">=", 0.1),
            Check(f"He std layer {d} / layer 1", _ratio(last["he"], first["he"]), "<=", 10.0),
            Check(
                f"Xavier std layer {d} / layer 1",
                _ratio(last["xavier"], first["xavier"]),
                "<=",
                1e-3,
            ),
            Check(f"N(0,0.01) std layer {d}", last["small"], "<=", 1e-10),
        ],
        effects=[effect(f"log10 std at layer {d}, He minus Xavier", log_gap)],
        note="Activation std at the last layer relative to the first, at initialization, mean "
        "over seeds.",
    )
    he_minus_xavier = [a["he"] - a["xavier"] for a in per_seed["accuracy"]]
    checks = [Check("He test accuracy, mean over seeds", acc["he"], ">=", 0.9)]
    if "lsuv" in acc:
        checks.append(Check("LSUV test accuracy, mean over seeds", acc["lsuv"], ">=", 0.9))
    checks += [
        Check("Xavier test accuracy, mean over seeds", acc["xavier"], "<=", 0.3),
        Check("N(0,0.01) test accuracy, mean over seeds", acc["small"], "<=", 0.3),
    ]
    train = Claim(
        key="init.train",
        experiment="init",
        text=f"A {cfg.train_depth}-layer ReLU MLP trains from He{'/LSUV' if 'lsuv' in acc else ''} "
        "init and does not from Xavier or small-Gaussian init",
        compared=f"test accuracy after {cfg.steps} SGD steps from He vs Xavier init: He leads "
        f"by {mean(he_minus_xavier):+.4g}; a deep ReLU net that does not train may just need He "
        "init.",
        checks=checks,
        effects=[effect("test accuracy, He minus Xavier", he_minus_xavier)],
        note=f"SGD (momentum 0.9, lr {cfg.lr!r}), {cfg.steps} steps of {cfg.batch_size}; "
        "chance is 0.10.",
    )
    ratio_gap = [
        math.log10(t["he_grad_ratio"]) - math.log10(t["xavier_grad_ratio"])
        for t in per_seed["tanh"]
    ]
    flow = Claim(
        key="init.tanh_flow",
        experiment="init",
        text="Xavier init keeps gradients flowing evenly through a deep tanh net; He does not",
        compared=f"first-to-last layer gradient-norm ratio in a {d}-layer tanh MLP at init: "
        f"Xavier {tanh['xavier_grad_ratio']:.4g}, He {tanh['he_grad_ratio']:.4g}: use Xavier "
        "(Glorot) init for tanh layers.",
        checks=[
            Check(
                "Xavier grad-norm ratio layer 1/last, mean", tanh["xavier_grad_ratio"], "<=", 2.0
            ),
            Check("He grad-norm ratio layer 1/last, mean", tanh["he_grad_ratio"], ">=", 2.0),
        ],
        effects=[effect("log10 grad-norm ratio, He minus Xavier", ratio_gap)],
        note=f"Gradient flow measured at init in the {d}-layer tanh MLP.",
    )
    acc_gap = [t["xavier_accuracy"] - t["he_accuracy"] for t in per_seed["tanh"]]
    tanh_train = Claim(
        key="init.tanh_train",
        experiment="init",
        text="A deep tanh net trains better from Xavier init than from He init",
        compared=f"test accuracy of a {cfg.train_depth}-layer tanh MLP after {cfg.tanh_steps} "
        f"steps, Xavier minus He = {mean(acc_gap):+.4g}"
        + (
            ": prefer Xavier for tanh."
            if mean(acc_gap) >= 0.03
            else ": at this depth both train; the choice matters little here."
        ),
        checks=[Check("Xavier minus He test accuracy (tanh), mean", mean(acc_gap), ">=", 0.03)],
        effects=[effect("test accuracy (tanh), Xavier minus He", acc_gap)],
        note="Same SGD settings as the ReLU nets.",
    )
    return [depth, train, flow, tanh_train]
