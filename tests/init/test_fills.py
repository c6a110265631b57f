"""The plain fills: bit-identical to torch.nn.init for the same generator, RNG hygiene, errors."""

import math

import pytest
import torch
from torch import nn

import traintech.init as ti

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

RANDOM = [
    (ti.uniform_, nn.init.uniform_, {}),
    (ti.uniform_, nn.init.uniform_, {"a": -0.3, "b": 0.7}),
    (ti.normal_, nn.init.normal_, {}),
    (ti.normal_, nn.init.normal_, {"mean": 1.5, "std": 0.02}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (64, 33), (8, 4, 3, 3)])
@pytest.mark.parametrize(("ours", "theirs", "kwargs"), RANDOM)
def test_random_fills_equal_torch_bit_for_bit(ours, theirs, kwargs, shape, dtype):
    a, b = torch.empty(shape, dtype=dtype), torch.empty(shape, dtype=dtype)
    out = ours(a, generator=torch.Generator().manual_seed(11), **kwargs)
    theirs(b, generator=torch.Generator().manual_seed(11), **kwargs)
    assert out is a
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(("ours", "theirs", "kwargs"), RANDOM)
def test_random_fills_with_global_rng_equal_torch(ours, theirs, kwargs):
    a, b = torch.empty(50, 20), torch.empty(50, 20)
    torch.manual_seed(5)
    ours(a, **kwargs)
    torch.manual_seed(5)
    theirs(b, **kwargs)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _global_rng_untouched(fn):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    fn()
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(
    "fill",
    [
        lambda g: ti.uniform_(torch.empty(30, 30), generator=g),
        lambda g: ti.normal_(torch.empty(30, 30), generator=g),
        lambda g: ti.sparse_(torch.empty(30, 30), 0.3, generator=g),
    ],
)
def test_a_given_generator_leaves_the_global_rng_alone_and_repeats(fill):
    _global_rng_untouched(lambda: fill(torch.Generator().manual_seed(0)))
    first = fill(torch.Generator().manual_seed(4))
    again = fill(torch.Generator().manual_seed(4))
    torch.testing.assert_close(first, again, rtol=0, atol=0)


def test_uniform_and_normal_moments_match_the_formulas():
    gen = torch.Generator().manual_seed(0)
    u = ti.uniform_(torch.empty(200_000, dtype=torch.float64), -1.0, 3.0, generator=gen)
    n = ti.normal_(torch.empty(200_000, dtype=torch.float64), 2.0, 0.5, generator=gen)
    # U(a, b): mean (a+b)/2, var (b-a)^2/12; standard errors ~ 0.003 and ~ 0.004
    assert abs(u.mean().item() - 1.0) < 0.015
    assert abs(u.var().item() - 16.0 / 12.0) < 0.02
    assert u.min().item() >= -1.0 and u.max().item() < 3.0
    assert abs(n.mean().item() - 2.0) < 0.005
    assert abs(n.std().item() - 0.5) < 0.005


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64, torch.bfloat16])
def test_constant_ones_zeros_equal_torch(dtype):
    for ours, theirs, args in [
        (ti.constant_, nn.init.constant_, (3,)),
        (ti.constant_, nn.init.constant_, (torch.tensor(2),)),
        (ti.ones_, nn.init.ones_, ()),
        (ti.zeros_, nn.init.zeros_, ()),
    ]:
        a = torch.full((3, 4), 9, dtype=dtype)
        b = torch.full((3, 4), 9, dtype=dtype)
        assert ours(a, *args) is a
        theirs(b, *args)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_constant_writes_non_finite_values_as_torch_does():
    a = ti.constant_(torch.empty(3), float("inf"))
    assert torch.isinf(a).all()


def test_fills_work_on_leaf_parameters_without_recording_a_graph():
    layer = nn.Linear(5, 4)
    for fill in (ti.uniform_, ti.normal_, ti.ones_, ti.zeros_, ti.eye_):
        out = fill(layer.weight)
        assert out is layer.weight and out.is_leaf and out.grad_fn is None
    assert ti.constant_(layer.bias, 0.5).requires_grad


def _eye_reference(rows, cols):
    return torch.tensor(
        [[1.0 if i == j else 0.0 for j in range(cols)] for i in range(rows)], dtype=torch.float64
    )


@pytest.mark.parametrize("shape", [(3, 3), (2, 5), (6, 4), (1, 1)])
def test_eye_equals_the_identity_and_torch(shape):
    a = ti.eye_(torch.full(shape, 7.0))
    torch.testing.assert_close(a.double(), _eye_reference(*shape), rtol=0, atol=0)
    torch.testing.assert_close(a, nn.init.eye_(torch.empty(shape)), rtol=0, atol=0)


def _dirac_reference(shape, groups):
    ref = torch.zeros(shape, dtype=torch.float64)
    per_group = shape[0] // groups
    centre = tuple(k // 2 for k in shape[2:])
    for g in range(groups):
        for d in range(min(per_group, shape[1])):
            ref[(g * per_group + d, d, *centre)] = 1.0
    return ref


@pytest.mark.parametrize(
    ("shape", "groups"),
    [
        ((4, 4, 3), 1),
        ((6, 2, 5), 3),
        ((3, 16, 5, 5), 1),
        ((8, 3, 3, 3), 2),
        ((4, 6, 3, 3, 3), 2),
        ((2, 5, 4, 4), 1),
    ],
)
def test_dirac_equals_the_formula_and_torch(shape, groups):
    a = ti.dirac_(torch.full(shape, 7.0), groups)
    torch.testing.assert_close(a.double(), _dirac_reference(shape, groups), rtol=0, atol=0)
    torch.testing.assert_close(a, nn.init.dirac_(torch.empty(shape), groups), rtol=0, atol=0)


def test_dirac_accepts_numpy_integer_groups_as_torch_does():
    np = pytest.importorskip("numpy")
    got = ti.dirac_(torch.empty(4, 4, 3), np.int64(2))
    torch.testing.assert_close(got, nn.init.dirac_(torch.empty(4, 4, 3), 2), rtol=0, atol=0)


def test_dirac_conv_passes_its_input_through():
    conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
    ti.dirac_(conv.weight)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(conv(x), x)


def test_sparse_with_the_global_rng_equals_torch():
    a, b = torch.empty(20, 9), torch.empty(20, 9)
    torch.manual_seed(3)
    ti.sparse_(a, 0.3, std=0.5)
    torch.manual_seed(3)
    nn.init.sparse_(b, 0.3, std=0.5)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(("rows", "cols", "sparsity"), [(20, 9, 0.3), (7, 3, 0.0), (5, 4, 1.0)])
def test_sparse_with_a_generator_equals_an_independent_reference(rows, cols, sparsity):
    gen = torch.Generator().manual_seed(8)
    ref = torch.empty(rows, cols).normal_(0, 0.1, generator=gen)
    for col in range(cols):
        perm = torch.randperm(rows, generator=gen)
        ref[perm[: math.ceil(sparsity * rows)], col] = 0
    got = ti.sparse_(torch.empty(rows, cols), sparsity, 0.1, torch.Generator().manual_seed(8))
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert ((got == 0).sum(dim=0) == math.ceil(sparsity * rows)).all()
    # torch's values where both are non-zero are the same normal draw
    theirs = nn.init.sparse_(
        torch.empty(rows, cols), sparsity, 0.1, torch.Generator().manual_seed(8)
    )
    both = (got != 0) & (theirs != 0)
    torch.testing.assert_close(got[both], theirs[both], rtol=0, atol=0)


def test_meta_tensors_are_accepted():
    for fill in (
        lambda t: ti.dirac_(t),
        lambda t: ti.sparse_(t[:, :, 0, 0], 0.5),
        lambda t: ti.uniform_(t),
        lambda t: ti.normal_(t),
    ):
        assert fill(torch.empty(4, 4, 3, 3, device="meta")).is_meta


BAD = [
    (lambda t: ti.uniform_(t, 1.0, 0.0), ValueError, r"a <= b, got a=1.0, b=0.0"),
    (lambda t: ti.uniform_(t, float("-inf"), 0.0), ValueError, "a must be a finite number"),
    (lambda t: ti.uniform_(t, "0", 1.0), TypeError, "a must be a real number"),
    (lambda t: ti.uniform_(t, generator=0), TypeError, "generator must be a torch.Generator"),
    (lambda t: ti.normal_(t, std=-1.0), ValueError, "std must be a finite number >= 0"),
    (lambda t: ti.normal_(t, mean=float("nan")), ValueError, "mean must be a finite number"),
    (lambda t: ti.normal_(t, generator="g"), TypeError, "generator"),
    (lambda t: ti.constant_(t, "3"), TypeError, "val must be a number"),
    (lambda t: ti.constant_(t, torch.ones(2)), TypeError, "val must be a number"),
    (lambda t: ti.ones_([1.0]), TypeError, "tensor must be a torch.Tensor"),
    (lambda t: ti.zeros_(None), TypeError, "tensor must be a torch.Tensor"),
    (lambda t: ti.eye_(t[0]), ValueError, r"2 dimensions are supported \(tensor has shape \(6,\)"),
    (lambda t: ti.dirac_(t), ValueError, r"3, 4, or 5 dimensions.*shape \(4, 6\)"),
    (lambda t: ti.dirac_(t.view(4, 6, 1), 3), ValueError, r"divisible by groups.*= 4.*= 3"),
    (lambda t: ti.dirac_(t.view(4, 6, 1), 0), ValueError, "groups must be an int >= 1"),
    (lambda t: ti.dirac_(t.view(4, 6, 1), 2.0), TypeError, "groups must be an int"),
    (lambda t: ti.sparse_(t, 1.5), ValueError, r"sparsity must lie in \[0, 1\], got 1.5"),
    (lambda t: ti.sparse_(t, 0.5, std=-0.1), ValueError, "std must be"),
    (lambda t: ti.sparse_(t.view(4, 6, 1), 0.5), ValueError, "2 dimensions"),
    (lambda t: ti.sparse_(t, 0.5, generator=1), TypeError, "generator"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD)
def test_bad_arguments_are_refused_before_anything_is_written(call, error, match):
    t = torch.full((4, 6), 7.0)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    with pytest.raises(error, match=match):
        call(t)
    assert torch.equal(t, torch.full((4, 6), 7.0))
    assert torch.equal(torch.get_rng_state(), state)
