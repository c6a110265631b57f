"""lsuv_: unit output variance layer by layer, orthogonal start, modes restored, report."""

import pytest
import torch
from torch import nn

import traintech.init as ti


def _model():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Conv2d(8, 8, 3, stride=2),
        nn.BatchNorm2d(8),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(8 * 7 * 7, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )


@pytest.mark.parametrize("target_var", [1.0, 0.25])
def test_each_layer_reaches_the_target_variance(target_var, seed):
    model = _model()
    x = torch.randn(64, 3, 16, 16, generator=seed)
    report = ti.lsuv_(model, x, target_var=target_var, tol=0.01, generator=seed)
    assert report.converged and [r.name for r in report] == ["0", "3", "7", "9"]
    model.eval()
    outputs = {}
    hooks = [
        model[i].register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o))
        for i in (0, 3, 7, 9)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for i in (0, 3, 7, 9):
        assert abs(outputs[i].double().var(unbiased=False).item() - target_var) < 0.01
    assert all(torch.count_nonzero(model[i].bias) == 0 for i in (0, 3, 7, 9))


def test_training_flags_are_restored_and_global_rng_untouched(seed):
    model = _model()
    model.train()
    model[2].eval()  # a mixed state must come back exactly
    x = torch.randn(16, 3, 16, 16, generator=seed)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    ti.lsuv_(model, x, generator=seed)
    assert torch.equal(torch.get_rng_state(), state)
    assert model.training and not model[2].training and model[4].training
    assert torch.equal(model[4].running_mean, torch.zeros(8))  # eval mode: stats untouched


def test_orthogonal_start_is_only_rescaled(seed):
    model = nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 16))
    x = torch.randn(128, 32, generator=seed)
    report = ti.lsuv_(model, x, generator=seed)
    for layer in (model[0], model[2]):
        w = layer.weight.detach().double()
        gram = w @ w.T
        scale = gram.diagonal().mean()
        torch.testing.assert_close(
            gram / scale, torch.eye(16, dtype=torch.float64), atol=1e-5, rtol=0
        )
    text = str(report)
    assert "var after orthogonal" in text and "yes" in text


def test_max_iters_bounds_the_work_and_dead_layers_are_reported(seed):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    x = torch.randn(32, 8, generator=seed)
    report = ti.lsuv_(model, x, tol=1e-12, max_iters=2, generator=seed)
    assert all(r.iterations <= 2 for r in report)
    zero = torch.zeros(4, 8)
    dead = ti.lsuv_(nn.Sequential(nn.Linear(8, 8, bias=False)), zero, generator=seed)
    assert not dead.converged and dead.records[0].final_var == 0.0
