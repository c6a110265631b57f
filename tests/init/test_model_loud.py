"""init_model is never quietly idle: unmatched keys, uncovered parameters, Conv1D, ties, repeats."""

import math
import warnings

import pytest
import torch
from torch import nn

import traintech.init as ti


def _mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _quiet(fn):
    """Run ``fn`` with every warning turned into an error (the call must not warn)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


# --- scheme keys that match nothing ------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "match"),
    [
        (
            "2.wieght",
            r"scheme key '2.wieght' matches no module or parameter of Sequential; "
            r"close matches: \['2.weight'",
        ),
        ("hed", r"scheme key 'hed' matches no module.*close matches: \[\]"),
        ("re:blocks\\..*", r"scheme key 're:blocks\\\\..\*' matches no module"),
        (
            nn.Conv2d,
            r"scheme key Conv2d matches no module of Sequential; close matches: \[\]; "
            r"module types present: \['Linear', 'ReLU', 'Sequential'\]",
        ),
        (nn.LazyLinear, r"scheme key LazyLinear matches no module.*close matches: \['Linear'\]"),
    ],
)
def test_a_key_that_matches_nothing_is_an_error_naming_it_and_close_matches(key, match):
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        ti.init_model(model, {nn.Linear: "zeros", key: "zeros"})
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_a_single_init_name_on_a_model_without_weight_layers_is_an_error():
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match=r"scheme='xavier_uniform' applies to .* has none"):
        ti.init_model(model, "xavier_uniform")


def test_a_key_matching_a_parameter_covers_that_parameter_alone():
    model = _mlp()
    report = _quiet(lambda: ti.init_model(model, {"2.weight": "zeros", "0.bias": "ones"}, _gen()))
    assert torch.equal(model[2].weight, torch.zeros(2, 8))
    assert torch.equal(model[0].bias, torch.ones(8))
    assert report["2.weight"].init == "zeros" and report["2.weight"].reason == "scheme['2.weight']"
    assert report["0.bias"].init == "ones"
    # the rest is "auto": He for the layer before the ReLU, its bias untouched by the key
    assert report["0.weight"].init.startswith("kaiming_uniform")
    assert torch.equal(model[2].bias, torch.zeros(2))


def test_a_wildcard_parameter_key_covers_weights_and_leaves_biases_to_auto():
    model = _mlp()
    report = _quiet(lambda: ti.init_model(model, {"*.weight": "orthogonal"}, _gen()))
    assert [r.init for r in report] == ["orthogonal", "zeros", "orthogonal", "zeros"]
    w = model[0].weight.detach().double()
    torch.testing.assert_close(w.T @ w, torch.eye(4, dtype=torch.float64), atol=1e-5, rtol=0)


def test_a_module_pattern_still_covers_the_modules_it_names():
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.Tanh()), nn.Linear(4, 2))
    report = _quiet(lambda: ti.init_model(model, {"0.*": "xavier_normal"}, _gen()))
    assert report["0.0.weight"].init == "xavier_normal"
    assert report["0.0.bias"].init == "zeros"  # a module key zeroes its biases


def test_a_parameter_key_survives_its_modules_reset_parameters():
    model = nn.Sequential(nn.Linear(4, 4))
    report = _quiet(lambda: ti.init_model(model, {"0.bias": "ones", nn.Linear: "reset_parameters"}))
    assert torch.equal(model[0].bias, torch.ones(4))
    assert report["0.bias"].init == "ones"
    assert report["0.weight"].init == "reset_parameters()"


def test_reset_parameters_on_a_parameter_key_is_refused():
    with pytest.raises(ValueError, match="matches the parameter '0.weight'.*use a module key"):
        ti.init_model(_mlp(), {"0.weight": "reset_parameters"})


# --- parameters no rule covers -----------------------------------------------------------------


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((4,), 3.0))

    def forward(self, x):
        return x * self.gamma


def test_uncovered_parameters_are_warned_about_and_listed():
    model = nn.Sequential(nn.Linear(4, 4), Scale())
    with pytest.warns(
        UserWarning,
        match=r"no rule covers 1 parameter\(s\) of Sequential: "
        r"1\.gamma \(untouched: no rule for Scale\).*\{'1.gamma': 'normal'\}",
    ):
        report = ti.init_model(model, generator=_gen())
    assert report.uncovered == ["1.gamma"]
    assert report["1.gamma"].init == "untouched"
    assert torch.equal(model[1].gamma, torch.full((4,), 3.0))


def test_modules_reset_by_their_own_reset_parameters_are_warned_about():
    class Own(Scale):
        def reset_parameters(self):
            nn.init.ones_(self.gamma)

    model = nn.Sequential(nn.Linear(4, 4), Own())
    with pytest.warns(UserWarning, match=r"1\.gamma \(reset_parameters\(\): .*global RNG"):
        report = ti.init_model(model)
    assert report.uncovered == ["1.gamma"]
    assert torch.equal(model[1].gamma, torch.ones(4))


@pytest.mark.parametrize(
    "scheme",
    [{Scale: "skip"}, {"1.gamma": "ones"}, {"1": "normal"}, {Scale: lambda t: t.data.fill_(2)}],
)
def test_giving_a_rule_covers_the_parameter_and_silences_the_warning(scheme):
    model = nn.Sequential(nn.Linear(4, 4), Scale())
    report = _quiet(lambda: ti.init_model(model, scheme, _gen()))
    assert report.uncovered == []


# --- transformers' Conv1D ----------------------------------------------------------------------


def _conv1d(nf, nx):
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    return pytorch_utils.Conv1D(nf, nx)


def test_conv1d_fans_are_read_from_its_in_out_layout():
    layer = _conv1d(nf=12, nx=5)
    assert tuple(layer.weight.shape) == (5, 12)
    assert ti.fan_in_and_fan_out(layer.weight, layer) == (5.0, 12.0)
    # torch's convention reads (out, in): the wrong axes for this layer
    assert ti.fan_in_and_fan_out(layer.weight) == (12, 5)


@pytest.mark.parametrize(("nf", "nx"), [(256, 64), (64, 256)])
def test_conv1d_under_init_model_gets_he_from_its_true_fan_in(nf, nx):
    model = nn.Sequential(_conv1d(nf, nx), nn.ReLU(), _conv1d(8, nf))
    report = _quiet(lambda: ti.init_model(model, generator=_gen(1)))
    expected = math.sqrt(2.0 / nx)  # He: Var = 2 / fan_in, fan_in = nx (the input features)
    assert report["0.weight"].init.startswith("kaiming_uniform")
    assert report["0.weight"].std == pytest.approx(expected)
    # the very same draw as torch's kaiming_uniform_ on the (out, in) = (nf, nx) layout
    ref = torch.nn.init.kaiming_uniform_(
        torch.empty(nf, nx), nonlinearity="relu", generator=_gen(1)
    )
    torch.testing.assert_close(model[0].weight.flatten(), ref.flatten(), rtol=0, atol=0)
    assert torch.equal(model[0].bias, torch.zeros(nf))
    # the output layer: Xavier with fans (nf, 8)
    assert report["2.weight"].std == pytest.approx(math.sqrt(2.0 / (nf + 8)))


@pytest.mark.slow
def test_tiny_gpt2_conv1d_layers_get_fans_from_the_right_axes():
    transformers = pytest.importorskip("transformers")
    GPT2Config, GPT2Model = transformers.GPT2Config, transformers.GPT2Model

    model = GPT2Model(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=256))
    report = ti.init_model(model, generator=_gen(0))
    conv = {n: m for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    assert len(conv) == 8
    for name, module in conv.items():
        record = report[f"{name}.weight"]
        nx, nf = module.weight.shape
        fan_in, fan_out = float(nx), float(nf)
        if record.init.startswith("kaiming"):
            want = math.sqrt(2.0 / fan_in)
        else:
            assert record.init == "xavier_uniform"
            want = math.sqrt(2.0 / (fan_in + fan_out))
        assert record.std == pytest.approx(want), name
        got = module.weight.detach().double().std().item()
        assert got == pytest.approx(want, rel=0.08), name
    # c_fc feeds GELU (He), c_proj the residual add (Xavier)
    assert report["h.0.mlp.c_fc.weight"].init.startswith("kaiming")
    assert report["h.0.mlp.c_proj.weight"].init == "xavier_uniform"


# --- tied weights ------------------------------------------------------------------------------


class TiedLM(nn.Module):
    def __init__(self, vocab=300, dim=32):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.body = nn.Linear(dim, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        return self.lm_head(torch.tanh(self.body(self.wte(idx))))


def test_a_tied_embedding_gets_the_output_layers_init_never_n01():
    model = TiedLM()
    report = _quiet(lambda: ti.init_model(model, generator=_gen(2)))
    names = [r.name for r in report]
    assert "wte.weight" not in names and names.count("lm_head.weight") == 1
    record = report["lm_head.weight"]
    expected = math.sqrt(2.0 / (32 + 300))  # Xavier of the (300, 32) output layer
    assert record.init == "xavier_uniform" and record.std == pytest.approx(expected)
    assert "tied with 'wte.weight'" in record.reason
    assert model.wte.weight is model.lm_head.weight
    assert model.wte.weight.std().item() == pytest.approx(expected, rel=0.05)
    bound = math.sqrt(3.0) * expected
    assert model.wte.weight.abs().max().item() <= bound


def test_a_tied_parameter_is_found_under_every_name():
    model = TiedLM()
    report = _quiet(lambda: ti.init_model(model, generator=_gen(2)))
    assert report["wte.weight"] is report["lm_head.weight"]
    assert report["lm_head.weight"].aliases == ("wte.weight",)


@pytest.mark.parametrize(
    "scheme",
    [{nn.Embedding: "normal"}, {"wte": "normal"}, {"wte.weight": "normal"}],
)
def test_an_explicit_rule_for_the_embedding_side_of_a_tie_is_honoured(scheme):
    model = TiedLM()
    report = _quiet(lambda: ti.init_model(model, scheme, _gen(2)))
    record = report["lm_head.weight"]
    assert record.name == "wte.weight" and record.init == "normal(0, 1)"
    assert model.wte.weight.std().item() == pytest.approx(1.0, rel=0.05)


@pytest.mark.slow
def test_gpt2_lm_head_tie_gets_the_output_init():
    transformers = pytest.importorskip("transformers")
    GPT2Config, GPT2LMHeadModel = transformers.GPT2Config, transformers.GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=200))
    assert model.lm_head.weight is model.transformer.wte.weight
    report = ti.init_model(model, generator=_gen(0))
    record = report["lm_head.weight"]
    assert record.init == "xavier_uniform"
    assert model.lm_head.weight.std().item() == pytest.approx(math.sqrt(2 / 232), rel=0.08)


# --- calling twice -----------------------------------------------------------------------------


def test_a_second_call_warns_naming_the_model_and_the_way_out():
    model = _mlp()
    _quiet(lambda: ti.init_model(model, generator=_gen()))
    with pytest.warns(UserWarning, match=r"already called on this Sequential.*warn_repeat=False"):
        ti.init_model(model, generator=_gen())
    _quiet(lambda: ti.init_model(model, generator=_gen(), warn_repeat=False))
    _quiet(lambda: ti.init_model(_mlp(), generator=_gen()))  # another model: no warning


def test_a_meta_plan_then_the_materialised_init_does_not_warn():
    with torch.device("meta"):
        model = _mlp()
    plan = _quiet(lambda: ti.init_model(model))
    assert not plan.materialized
    model.to_empty(device="cpu")
    report = _quiet(lambda: ti.init_model(model, generator=_gen()))
    assert report.materialized


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"warn_repeat": 1}, "warn_repeat must be a bool"),
        ({"use_fx": "yes"}, "use_fx must be a bool"),
    ],
)
def test_flag_arguments_are_checked(kwargs, match):
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match=match):
        ti.init_model(model, **kwargs)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


# --- reading blocks that register their activation last ----------------------------------------


class HFStyleMLP(nn.Module):
    """Registers both projections before the activation, as transformers' GPT2MLP does."""

    def __init__(self, act):
        super().__init__()
        self.c_fc = nn.Linear(16, 64)
        self.c_proj = nn.Linear(64, 16)
        self.act = act

    def forward(self, x):
        return self.c_proj(self.act(self.c_fc(x)))


class NewGELUActivation(nn.Module):
    """A parameter-free activation known only by its class name (as in transformers)."""

    def forward(self, x):
        return nn.functional.gelu(x, approximate="tanh")


@pytest.mark.parametrize("act", [nn.GELU(), NewGELUActivation(), nn.Tanh()])
def test_module_order_reads_an_mlp_block_by_its_act_attribute(act):
    model = HFStyleMLP(act)
    report = _quiet(lambda: ti.init_model(model, generator=_gen(), use_fx=False))
    fc, proj = report["c_fc.weight"], report["c_proj.weight"]
    if isinstance(act, nn.Tanh):
        assert fc.init == "xavier_uniform" and "Tanh" in fc.reason
    else:
        assert fc.init.startswith("kaiming_uniform") and fc.std == pytest.approx(math.sqrt(2 / 16))
    assert proj.init == "xavier_uniform" and "MLP output" in proj.reason


class WithRootParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.full((1, 8, 4), 5.0))
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x + self.pos_embed)


def test_a_parameter_on_the_model_itself_is_warned_about_and_can_be_named():
    with pytest.warns(UserWarning, match=r"pos_embed \(untouched"):
        report = ti.init_model(WithRootParameter(), generator=_gen())
    assert report.uncovered == ["pos_embed"]
    model = WithRootParameter()
    report = _quiet(lambda: ti.init_model(model, {"pos_embed": "trunc_normal"}, _gen()))
    assert report["pos_embed"].init.startswith("trunc_normal")
    assert model.pos_embed.abs().max().item() <= 0.04


@pytest.mark.parametrize(
    ("class_name", "family"),
    [
        ("GELUActivation", "relu"),
        ("NewGELUActivation", "relu"),
        ("QuickGELUActivation", "relu"),
        ("SiLUActivation", "relu"),
        ("ReLUSquaredActivation", "relu"),
        ("ClassInstantier", None),
    ],
)
def test_parameter_free_activations_of_other_libraries_are_known_by_class_name(class_name, family):
    from traintech.init._activations import classify_module

    module = type(class_name, (nn.Module,), {"forward": lambda self, x: x})()
    found = classify_module(module, "act")
    assert (found.family if found is not None else None) == family


def test_a_module_named_like_an_activation_but_with_parameters_is_not_one():
    from traintech.init._activations import classify_module

    gated = type("GELUGate", (nn.Module,), {})()
    gated.proj = nn.Linear(2, 2)
    assert classify_module(gated, "gate") is None
