"""Bad input: ValueError/TypeError naming the argument, raised before anything is written."""

import pytest
import torch
from torch import nn

import traintech.init as ti

CASES = [
    (lambda t: ti.fan_in_and_fan_out(torch.empty(5)), ValueError, "fewer than 2 dimensions"),
    (lambda t: ti.xavier_uniform_(torch.empty(5)), ValueError, "tensor has shape"),
    (lambda t: ti.kaiming_normal_(torch.empty(5)), ValueError, "fewer than 2 dimensions"),
    (lambda t: ti.orthogonal_(torch.empty(5)), ValueError, "tensor has shape"),
    (lambda t: ti.lecun_normal_(torch.empty(5)), ValueError, "fewer than 2 dimensions"),
    (lambda t: ti.kaiming_uniform_(t, nonlinearity="gelu"), ValueError, "nonlinearity gelu"),
    (lambda t: ti.kaiming_uniform_(t, mode="fan_avg"), ValueError, "mode='fan_avg'"),
    (lambda t: ti.kaiming_uniform_(t, mode=3), TypeError, "mode must be a string"),
    (lambda t: ti.variance_scaling_(t, mode="fan_x"), ValueError, "mode='fan_x'"),
    (lambda t: ti.variance_scaling_(t, distribution="normal"), ValueError, "distribution"),
    (lambda t: ti.variance_scaling_(t, scale=0.0), ValueError, "scale"),
    (lambda t: ti.variance_scaling_(t, scale=-1.0), ValueError, "scale"),
    (lambda t: ti.variance_scaling_(t, scale="2"), TypeError, "scale"),
    (lambda t: ti.xavier_uniform_(t, gain=-1.0), ValueError, "gain"),
    (lambda t: ti.xavier_normal_(t, gain=float("nan")), ValueError, "gain"),
    (lambda t: ti.orthogonal_(t, gain=-2.0), ValueError, "gain"),
    (lambda t: ti.trunc_normal_(t, std=0.0), ValueError, "std"),
    (lambda t: ti.trunc_normal_(t, a=1.0, b=1.0), ValueError, "a < b"),
    (lambda t: ti.xavier_uniform_([[1.0]]), TypeError, "tensor must be a torch.Tensor"),
    (lambda t: ti.kaiming_uniform_(t, generator=3), TypeError, "generator must be a torch.Gen"),
    (lambda t: ti.orthogonal_(t, generator="g"), TypeError, "generator must be a torch.Gen"),
    (lambda t: ti.trunc_normal_(t, std="1"), TypeError, "std must be a finite number > 0"),
    (lambda t: ti.variance_scaling_(t, generator=1), TypeError, "generator must be a torch"),
]


@pytest.mark.parametrize(("call", "error", "match"), CASES)
def test_bad_input_names_the_argument_and_changes_nothing(call, error, match):
    t = torch.full((4, 6), 7.0)
    with pytest.raises(error, match=match):
        call(t)
    assert torch.equal(t, torch.full((4, 6), 7.0))


def test_mode_message_keeps_torchs_text():
    with pytest.raises(ValueError, match=r"Mode fan_avg not supported, please use one of"):
        ti.kaiming_normal_(torch.empty(3, 3), mode="fan_avg")


MODEL_CASES = [
    (lambda m: ti.init_model(m, scheme="xavier"), ValueError, "scheme"),
    (lambda m: ti.init_model(m, scheme=3), TypeError, "scheme"),
    (lambda m: ti.init_model(m, {nn.Linear: "bogus"}), ValueError, "not an init name"),
    (lambda m: ti.init_model(m, {"re:(": "zeros"}), ValueError, "regular expression"),
    (lambda m: ti.init_model(m, {nn.Linear: 3}), TypeError, "callable"),
    (lambda m: ti.init_model(m, {5: "zeros"}), TypeError, "scheme keys"),
    (lambda m: ti.init_model(m, {nn.LayerNorm: "xavier_uniform"}), ValueError, "needs fans"),
    (lambda m: ti.init_model(m, distribution="gaussian"), ValueError, "distribution"),
    (lambda m: ti.init_model(m, generator=0), TypeError, "generator"),
    (lambda m: ti.init_model(m, residual=["nope"]), ValueError, "residual"),
    (lambda m: ti.init_model(m, residual=["2"], num_residual=0), ValueError, "num_residual"),
    (lambda m: ti.init_model("model"), TypeError, "model"),
    (lambda m: ti.lsuv_(m, torch.ones(2, 4), tol=0.0), ValueError, "tol"),
    (lambda m: ti.lsuv_(m, torch.ones(2, 4), target_var=-1.0), ValueError, "target_var"),
    (lambda m: ti.lsuv_(m, torch.ones(2, 4), max_iters=0), ValueError, "max_iters"),
    (lambda m: ti.lsuv_(m, 3.0), TypeError, "batch"),
    (lambda m: ti.lsuv_(m, torch.ones(2, 4), generator=1), TypeError, "generator"),
    (lambda m: ti.variance_profile(m, "x"), TypeError, "batch"),
]


@pytest.mark.parametrize(("call", "error", "match"), MODEL_CASES)
def test_model_level_bad_input(call, error, match):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2), nn.LayerNorm(2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        call(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_generator_on_the_wrong_device_is_rejected_before_any_write():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)).cuda()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="generator is on cpu"):
        ti.init_model(model, generator=torch.Generator())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
