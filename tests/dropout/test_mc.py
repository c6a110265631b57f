"""mc_predict: modes, BatchNorm untouched, reproducibility, uncertainty formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import traintech.dropout as D


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(16, 16),
        D.Dropout(0.2),
        D.DropPath(0.1),
        nn.Linear(16, 4),
    )


def test_only_dropout_layers_train_and_modes_restored(seed) -> None:
    model = _model().train()
    model[4].eval()  # a mixed state to restore exactly
    seen = {}

    def hook(module, args, out):
        seen[module] = module.training

    for m in model:
        m.register_forward_hook(hook)
    before = {m: m.training for m in model.modules()}
    D.mc_predict(model, torch.randn(5, 6, generator=seed), 3, seed, samples_per_forward=1)
    assert {type(m).__name__ for m, t in seen.items() if t} == {"Dropout", "DropPath"}
    assert seen[model[1]] is False
    assert {m: m.training for m in model.modules()} == before


def test_modes_restored_on_error(seed) -> None:
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(3), Boom()).train()
    gen = torch.Generator().manual_seed(5)
    ours = D.Dropout(0.5, generator=gen)
    model.append(ours)
    with pytest.raises(RuntimeError, match="boom"):
        D.mc_predict(model, torch.randn(2, 3), 4, seed)
    assert all(m.training for m in model.modules())
    assert ours.generator is gen


def test_batchnorm_statistics_unchanged(seed) -> None:
    model = _model().train()
    model(torch.randn(32, 6, generator=seed))  # non-trivial running stats
    bn = model[1]
    state = {k: v.clone() for k, v in bn.state_dict().items()}
    D.mc_predict(model, torch.randn(8, 6, generator=seed), 10, seed)
    for key, value in bn.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


@pytest.mark.parametrize("per_forward", [None, 1, 4])
def test_reproducible_with_generator_and_global_rng_untouched(per_forward) -> None:
    model = _model()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(42)
    rng = torch.get_rng_state()
    a = D.mc_predict(model, x, 7, torch.Generator().manual_seed(3), samples_per_forward=per_forward)
    b = D.mc_predict(model, x, 7, torch.Generator().manual_seed(3), samples_per_forward=per_forward)
    assert torch.equal(torch.get_rng_state(), rng)
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)
    torch.testing.assert_close(a.std, b.std, rtol=0, atol=0)
    c = D.mc_predict(model, x, 7, torch.Generator().manual_seed(4), samples_per_forward=per_forward)
    assert not torch.equal(a.mean, c.mean)
    assert (a.std > 0).any()


def test_regression_statistics_match_samples(seed) -> None:
    res = D.mc_predict(
        _model(),
        torch.randn(4, 6, generator=seed),
        9,
        seed,
        task="regression",
        return_samples=True,
    )
    s = res.samples.double()
    assert s.shape[0] == 9
    torch.testing.assert_close(res.mean.double(), s.mean(0), rtol=1e-6, atol=1e-6)
    ref_std = ((s - s.mean(0)) ** 2).mean(0).sqrt()
    torch.testing.assert_close(res.std.double(), ref_std, rtol=1e-5, atol=1e-6)
    assert res.predictive_entropy is None and res.mutual_information is None


def test_classification_entropy_and_mutual_information(seed) -> None:
    res = D.mc_predict(
        _model(),
        torch.randn(6, 6, generator=seed),
        12,
        seed,
        task="classification",
        return_samples=True,
    )
    probs = res.samples.double()
    torch.testing.assert_close(probs.sum(-1), torch.ones(12, 6, dtype=torch.float64))
    mean = probs.mean(0)
    h = -(mean * mean.log()).sum(-1)
    eh = -(probs * probs.log()).sum(-1).mean(0)
    torch.testing.assert_close(res.mean.double(), mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(res.predictive_entropy.double(), h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.expected_entropy.double(), eh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        res.mutual_information.double(), (h - eh).clamp_min(0), atol=1e-5, rtol=0
    )
    assert (res.mutual_information > 0).all()
    assert res.entropy is res.predictive_entropy


def test_class_dim_for_segmentation_output(seed) -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.Dropout2d(0.5))
    res = D.mc_predict(
        model, torch.randn(2, 2, 4, 4, generator=seed), 5, seed, task="classification", class_dim=1
    )
    torch.testing.assert_close(res.mean.sum(1), torch.ones(2, 4, 4))
    assert res.predictive_entropy.shape == (2, 4, 4)


def test_batched_and_sequential_agree_in_distribution() -> None:
    model = nn.Sequential(nn.Dropout(0.5))
    x = torch.ones(1, 2000)
    a = D.mc_predict(
        model, x, 64, torch.Generator().manual_seed(0), samples_per_forward=64, return_samples=True
    )
    b = D.mc_predict(model, x, 64, torch.Generator().manual_seed(1), samples_per_forward=1)
    # each element: mean of 64 draws of {0, 2}: se = 1/8; averaged over 2000 elements
    assert abs(a.mean.mean().item() - 1) < 5 / 8 / 2000**0.5
    assert abs(b.mean.mean().item() - 1) < 5 / 8 / 2000**0.5
    # the copies in one forward got their own masks
    assert not torch.equal(a.samples[0], a.samples[1])


def test_drop_connect_samples_sequentially(seed) -> None:
    model = nn.Sequential(D.DropConnect(nn.Linear(3, 3), 0.5))
    res = D.mc_predict(model, torch.ones(1, 3), 20, seed, return_samples=True)
    assert len({tuple(s.flatten().tolist()) for s in res.samples}) > 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_samples": 0}, "n_samples"),
        ({"task": "ranking"}, "task"),
        ({"samples_per_forward": 0}, "samples_per_forward"),
    ],
)
def test_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        D.mc_predict(_model(), torch.ones(2, 6), **kwargs)


def test_model_without_dropout_raises() -> None:
    with pytest.raises(ValueError, match="dropout"):
        D.mc_predict(nn.Linear(2, 2), torch.ones(1, 2))


def test_output_not_batch_first_and_not_tensor(seed) -> None:
    class Pool(nn.Module):
        def forward(self, x):
            return x.sum(0, keepdim=True)

    model = nn.Sequential(nn.Dropout(0.5), Pool())
    with pytest.raises(ValueError, match="samples_per_forward=1"):
        D.mc_predict(model, torch.ones(3, 2), 4, seed, samples_per_forward=2)
    res = D.mc_predict(model, torch.ones(3, 2), 4, seed, samples_per_forward=1)
    assert res.mean.shape == (1, 2)

    class Dict(nn.Module):
        def forward(self, x):
            return {"y": x}

    with pytest.raises(TypeError, match="model"):
        D.mc_predict(nn.Sequential(nn.Dropout(0.5), Dict()), torch.ones(3, 2), 2, seed)
    assert model.training


def _entropies_f64(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = probs.double()
    p_bar = p.mean(0)
    total = -(p_bar * p_bar.clamp_min(1e-300).log()).sum(-1)
    expected = -(p * p.clamp_min(1e-300).log()).sum(-1).mean(0)
    return total, expected


@pytest.mark.parametrize("softmax_head", [False, True])
def test_auto_default_raw_mean_and_entropies(seed, softmax_head: bool) -> None:
    model = _model() if not softmax_head else nn.Sequential(_model(), nn.Softmax(-1))
    x = torch.randn(5, 6, generator=seed)
    res = D.mc_predict(model, x, 11, torch.Generator().manual_seed(3), return_samples=True)
    raw = res.samples.double()
    torch.testing.assert_close(res.mean.double(), raw.mean(0), rtol=1e-6, atol=1e-6)
    probs = raw if softmax_head else torch.softmax(raw, -1)
    total, expected = _entropies_f64(probs)
    torch.testing.assert_close(res.predictive_entropy.double(), total, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.expected_entropy.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        res.mutual_information.double(), (total - expected).clamp_min(0), rtol=1e-4, atol=1e-6
    )
    assert res.entropy is res.predictive_entropy


def test_auto_no_class_dim_gives_no_entropy(seed) -> None:
    model = nn.Sequential(nn.Linear(6, 1), nn.Dropout(0.5), nn.Flatten(0))
    res = D.mc_predict(model, torch.randn(4, 6, generator=seed), 5, seed)
    assert res.mean.shape == (4,) and res.predictive_entropy is None
    single = nn.Sequential(nn.Linear(6, 1), nn.Dropout(0.5))
    assert D.mc_predict(single, torch.randn(4, 6, generator=seed), 5, seed).entropy is None


def test_result_unpacks_as_mean_spread_entropy(seed) -> None:
    res = D.mc_predict(_model(), torch.randn(3, 6, generator=seed), 6, seed)
    mean, spread, entropy = res
    assert mean is res.mean and spread is res.std and spread is res.spread
    assert entropy is res.predictive_entropy and entropy is not None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_auto_detects_low_precision_probabilities(seed, dtype) -> None:
    model = nn.Sequential(nn.Linear(6, 10), nn.Dropout(0.3), nn.Softmax(-1)).to(dtype)
    res = D.mc_predict(
        model, torch.randn(8, 6, generator=seed).to(dtype), 5, seed, return_samples=True
    )
    probs = res.samples.double()
    total, _ = _entropies_f64(probs)  # read as probabilities, not softmaxed again
    torch.testing.assert_close(res.predictive_entropy.double(), total, rtol=1e-4, atol=1e-5)
