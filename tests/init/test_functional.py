"""Drop-in behaviour: torch parity for the same generator, RNG hygiene, dtypes, meta tensors."""

import math
import warnings

import pytest
import torch
from torch import nn

import traintech.init as ti

SHAPES = [(64, 32), (32, 64), (16, 8, 3, 3), (8, 4, 5)]


def _pair(shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype), torch.empty(shape, dtype=dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("ours", "theirs", "kwargs"),
    [
        (ti.xavier_uniform_, nn.init.xavier_uniform_, {"gain": 1.7}),
        (ti.xavier_normal_, nn.init.xavier_normal_, {"gain": 0.5}),
        (ti.kaiming_uniform_, nn.init.kaiming_uniform_, {}),
        (ti.kaiming_uniform_, nn.init.kaiming_uniform_, {"a": 0.2, "mode": "fan_out"}),
        (ti.kaiming_normal_, nn.init.kaiming_normal_, {"nonlinearity": "relu"}),
        (ti.kaiming_normal_, nn.init.kaiming_normal_, {"mode": "FAN_OUT", "nonlinearity": "tanh"}),
        (ti.orthogonal_, nn.init.orthogonal_, {"gain": 2.0}),
        (ti.trunc_normal_, nn.init.trunc_normal_, {"std": 0.5, "a": -0.6, "b": 0.9}),
        (ti.trunc_normal_, nn.init.trunc_normal_, {}),
    ],
)
def test_same_values_as_torch_for_the_same_generator(ours, theirs, kwargs, shape):
    a, b = _pair(shape)
    out = ours(a, generator=torch.Generator().manual_seed(3), **kwargs)
    theirs(b, generator=torch.Generator().manual_seed(3), **kwargs)
    assert out is a
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (ti.xavier_uniform_, nn.init.xavier_uniform_),
        (ti.kaiming_normal_, nn.init.kaiming_normal_),
        (ti.trunc_normal_, nn.init.trunc_normal_),
    ],
)
def test_torch_parity_in_other_dtypes(ours, theirs, dtype):
    a, b = _pair((40, 30), dtype)
    ours(a, generator=torch.Generator().manual_seed(1))
    theirs(b, generator=torch.Generator().manual_seed(1))
    assert a.dtype == dtype
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_orthogonal_half_precision_is_orthogonal(dtype):
    # torch's own orthogonal_ has no half-precision QR on CPU; ours factors in float32.
    w = ti.orthogonal_(torch.empty(32, 48, dtype=dtype), generator=torch.Generator().manual_seed(0))
    assert w.dtype == dtype
    w64 = w.double()
    torch.testing.assert_close(w64 @ w64.T, torch.eye(32, dtype=torch.float64), atol=2e-2, rtol=0)


@pytest.mark.parametrize(
    "call",
    [
        lambda t, g: ti.xavier_uniform_(t, generator=g),
        lambda t, g: ti.xavier_normal_(t, generator=g),
        lambda t, g: ti.kaiming_uniform_(t, generator=g),
        lambda t, g: ti.kaiming_normal_(t, generator=g),
        lambda t, g: ti.orthogonal_(t, generator=g),
        lambda t, g: ti.trunc_normal_(t, generator=g),
        lambda t, g: ti.trunc_normal_(t, a=1.5, b=4.0, generator=g),
        lambda t, g: ti.lecun_uniform_(t, generator=g),
        lambda t, g: ti.lecun_normal_(t, generator=g),
        lambda t, g: ti.variance_scaling_(t, 2.0, "fan_avg", "untruncated_normal", generator=g),
    ],
)
def test_generator_repeats_and_global_rng_untouched(call):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = call(torch.empty(20, 30), torch.Generator().manual_seed(7))
    second = call(torch.empty(20, 30), torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, second)
    third = call(torch.empty(20, 30), torch.Generator().manual_seed(8))
    assert not torch.equal(first, third)


def test_without_generator_uses_the_global_rng_like_torch():
    torch.manual_seed(5)
    a = ti.kaiming_uniform_(torch.empty(10, 10))
    torch.manual_seed(5)
    b = nn.init.kaiming_uniform_(torch.empty(10, 10))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "init",
    [
        ti.xavier_uniform_,
        ti.xavier_normal_,
        ti.kaiming_uniform_,
        ti.kaiming_normal_,
        ti.orthogonal_,
        ti.trunc_normal_,
        ti.lecun_normal_,
        ti.lecun_uniform_,
        ti.variance_scaling_,
    ],
)
def test_meta_tensors_are_left_alone_and_grad_not_recorded(init):
    meta = torch.empty(6, 4, device="meta")
    assert init(meta) is meta
    p = nn.Parameter(torch.empty(6, 4))
    out = init(p)
    assert out is p and out.grad_fn is None and p.requires_grad


def test_kaiming_zero_element_warns_like_torch():
    with pytest.warns(UserWarning, match="zero-element"):
        ti.kaiming_uniform_(torch.empty(0, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ti.orthogonal_(torch.empty(0, 3)).numel() == 0


NONLINEARITIES = [
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
]


@pytest.mark.parametrize("name", NONLINEARITIES)
@pytest.mark.parametrize("param", [None, 0.2, 3])
def test_calculate_gain_equals_torch(name, param):
    assert ti.calculate_gain(name, param) == nn.init.calculate_gain(name, param)


def test_calculate_gain_values_from_the_formulas():
    assert ti.calculate_gain("relu") == math.sqrt(2.0)
    assert ti.calculate_gain("leaky_relu", 0.3) == pytest.approx(math.sqrt(2 / 1.09), abs=1e-15)
    assert ti.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert ti.calculate_gain("selu") == 0.75


@pytest.mark.parametrize(
    ("name", "param"), [("gelu", None), ("Relu", None), ("leaky_relu", "x"), ("leaky_relu", True)]
)
def test_calculate_gain_errors_match_torch(name, param):
    with pytest.raises(ValueError) as ours:
        ti.calculate_gain(name, param)
    with pytest.raises(ValueError) as theirs:
        nn.init.calculate_gain(name, param)
    assert str(ours.value) == str(theirs.value)
