"""init_model: activation detection (fx and module order), recipes, schemes, residual scaling."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import traintech.init as ti


def _var_close(t, expected):
    n = t.numel()
    assert abs(t.detach().double().var().item() - expected) < 5 * expected * math.sqrt(2 / n)


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 128)
        self.b = nn.Linear(128, 128)
        self.c = nn.Linear(128, 96)
        self.d = nn.Linear(96, 64)
        self.e = nn.Linear(64, 32)
        self.f = nn.Conv1d(1, 4, 3)

    def forward(self, x):
        h = F.relu(self.a(x))
        h = F.leaky_relu(F.dropout(self.b(h), 0.1, self.training).view(-1, 128), 0.3)
        h = torch.tanh(self.c(h))
        h = F.selu(self.d(h))
        return self.e(h)  # no activation


def test_functional_activations_are_found_through_the_fx_graph(seed):
    model = Functional()
    report = ti.init_model(model, generator=seed)
    assert report.method == "fx"
    assert report["a.weight"].init.startswith("kaiming_uniform(a=0,")
    assert report["b.weight"].init == "kaiming_uniform(a=0.3, fan_in, leaky_relu)"
    assert report["c.weight"].init == "xavier_uniform"
    assert report["d.weight"].init == "lecun_uniform"
    assert report["e.weight"].init == "xavier_uniform"
    assert "fx graph" in report["a.weight"].reason
    assert "module order" in report["f.weight"].reason  # not called in forward
    _var_close(model.a.weight, 2 / 64)
    _var_close(model.b.weight, 2 / (1.09 * 128))
    _var_close(model.c.weight, 2 / (128 + 96))
    _var_close(model.d.weight, 1 / 96)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0
        else:
            assert report[name].std == pytest.approx(p.detach().double().std().item(), rel=0.1)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3),
            nn.BatchNorm2d(16),
            nn.PReLU(init=0.1),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16, 8),
            nn.SELU(),
            nn.Linear(8, 4),
        )

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            return self.net(x)
        return self.net(-x)


def test_module_order_fallback_and_norm_and_prelu(seed):
    model = Untraceable()
    with torch.no_grad():
        model.net[1].running_mean.fill_(3.0)
        model.net[2].weight.fill_(0.7)
    report = ti.init_model(model, generator=seed)
    assert report.method.startswith("module order (torch.fx could not trace")
    assert report["net.0.weight"].init == "kaiming_uniform(a=0.1, fan_in, leaky_relu)"
    assert report["net.5.weight"].init == "lecun_uniform"
    assert report["net.7.weight"].init == "xavier_uniform"
    assert torch.equal(model.net[1].weight, torch.ones(16))
    assert torch.equal(model.net[1].running_mean, torch.zeros(16))
    assert torch.equal(model.net[2].weight, torch.full((1,), 0.1))
    _var_close(model.net[0].weight, 2 / (1.01 * 27))


def test_use_fx_false_gives_the_same_choices_for_a_sequential(seed):
    def make():
        return nn.Sequential(
            nn.Linear(8, 8), nn.GELU(), nn.Dropout(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 2)
        )

    fx = ti.init_model(make(), generator=seed)
    order = ti.init_model(make(), generator=seed, use_fx=False)
    assert fx.method == "fx" and order.method == "module order (fx disabled)"
    assert [r.init for r in fx] == [r.init for r in order]
    assert fx["0.weight"].init.startswith("kaiming") and fx["3.weight"].init == "xavier_uniform"


def test_residual_add_and_norm_are_looked_through(seed):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)
            self.norm = nn.LayerNorm(16)

        def forward(self, x):
            return F.relu(self.norm(x + self.fc(x)))

    report = ti.init_model(Block(), generator=seed)
    assert report["fc.weight"].init.startswith("kaiming_uniform(a=0,")


def test_lstm_recipe(seed):
    lstm = nn.LSTM(12, 16, num_layers=2, bidirectional=True)
    ti.init_model(lstm, generator=seed)
    h = 16
    for name, p in lstm.named_parameters():
        if name.startswith("weight_hh"):
            for block in p.detach().double().chunk(4, 0):
                torch.testing.assert_close(
                    block @ block.T, torch.eye(h, dtype=torch.float64), atol=1e-5, rtol=0
                )
        elif name.startswith("weight_ih"):
            fan_in = p.shape[1]
            for block in p.detach().chunk(4, 0):
                bound = math.sqrt(6 / (fan_in + h))
                assert block.abs().max() <= bound
                assert block.abs().max() > 0.9 * bound
    for layer in range(2):
        for suffix in ("", "_reverse"):
            bias = getattr(lstm, f"bias_ih_l{layer}{suffix}") + getattr(
                lstm, f"bias_hh_l{layer}{suffix}"
            )
            expected = torch.zeros(4 * h)
            expected[h : 2 * h] = 1.0
            assert torch.equal(bias.detach(), expected)


@pytest.mark.parametrize(
    "module", [nn.GRU(6, 8), nn.RNN(6, 8), nn.GRUCell(6, 8), nn.LSTMCell(6, 8)]
)
def test_other_recurrent_layers(module, seed):
    ti.init_model(module, generator=seed)
    gates = {nn.GRU: 3, nn.RNN: 1, nn.GRUCell: 3, nn.LSTMCell: 4}[type(module)]
    w_hh = next(p for n, p in module.named_parameters() if n.startswith("weight_hh"))
    for block in w_hh.detach().double().chunk(gates, 0):
        torch.testing.assert_close(
            block @ block.T, torch.eye(8, dtype=torch.float64), atol=1e-5, rtol=0
        )
    biases = [p for n, p in module.named_parameters() if n.startswith("bias")]
    total = sum(b.detach() for b in biases)
    expected = torch.zeros(gates * 8)
    if gates == 4:
        expected[8:16] = 1.0
    assert torch.equal(total, expected)


def test_embedding_attention_and_transformer_layer(seed):
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 32, padding_idx=0)
            self.layer = nn.TransformerEncoderLayer(32, 4, 64, activation="gelu", batch_first=True)

        def forward(self, idx):
            return self.layer(self.emb(idx))

    model = Tiny()
    report = ti.init_model(model, generator=seed)
    assert torch.equal(model.emb.weight[0], torch.zeros(32))
    _var_close(model.emb.weight[1:], 1.0)
    assert report["layer.linear1.weight"].init.startswith("kaiming")
    assert report["layer.linear2.weight"].init == "xavier_uniform"
    for block in model.layer.self_attn.in_proj_weight.detach().chunk(3, 0):
        assert block.abs().max() <= math.sqrt(6 / 64)
    assert torch.count_nonzero(model.layer.self_attn.in_proj_bias) == 0


def test_residual_scaling_by_blocks_and_by_names(seed):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(32, 64)
            self.fc2 = nn.Linear(64, 32)

        def forward(self, x):
            return x + self.fc2(F.relu(self.fc1(x)))

    blocks = lambda: nn.Sequential(*[Block() for _ in range(4)])  # noqa: E731
    a, b = blocks(), blocks()
    ra = ti.init_model(a, generator=torch.Generator().manual_seed(0), residual=["*"])
    rb = ti.init_model(b, generator=torch.Generator().manual_seed(0), residual=["*.fc2"])
    plain = blocks()
    ti.init_model(plain, generator=torch.Generator().manual_seed(0))
    for i in range(4):
        torch.testing.assert_close(a[i].fc2.weight, plain[i].fc2.weight / 2.0)
        torch.testing.assert_close(b[i].fc2.weight, a[i].fc2.weight)
        torch.testing.assert_close(a[i].fc1.weight, plain[i].fc1.weight)
    assert ra["0.fc2.weight"].init == "xavier_uniform x 1/sqrt(4)"
    assert rb["3.fc2.weight"].std == pytest.approx(ra["3.fc2.weight"].std)
    c = blocks()
    ti.init_model(c, generator=torch.Generator().manual_seed(0), residual=[c[0]], num_residual=16)
    torch.testing.assert_close(c[0].fc2.weight, plain[0].fc2.weight / 4.0)


def test_mapping_scheme_by_type_pattern_and_regex(seed):
    model = nn.Sequential(
        nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 4), nn.LayerNorm(4)
    )
    calls = []

    def my_init(t, generator=None):
        calls.append(generator)
        with torch.no_grad():
            return t.fill_(0.5)

    report = ti.init_model(
        model,
        {"re:[23]": my_init, "0": "orthogonal", nn.LayerNorm: "skip", nn.Linear: "zeros"},
        generator=seed,
    )
    assert torch.equal(model[2].weight, torch.full((8, 8), 0.5))
    assert torch.equal(model[3].weight, torch.full((4, 8), 0.5))
    assert calls == [seed, seed]
    w0 = model[0].weight.detach().double()
    torch.testing.assert_close(w0 @ w0.T, torch.eye(8, dtype=torch.float64), atol=1e-5, rtol=0)
    assert report["4.weight"].init == "untouched"
    assert report["2.bias"].init == "zeros"
    assert report["2.weight"].reason == "scheme['re:[23]']"


def test_global_rng_untouched_and_generator_reproducible():
    a, b = Functional(), Functional()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    ti.init_model(a, generator=torch.Generator().manual_seed(9))
    ti.init_model(b, generator=torch.Generator().manual_seed(9))
    assert torch.equal(torch.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_meta_device_plan_then_materialize(seed):
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8), nn.BatchNorm1d(8))
    plan = ti.init_model(model, generator=seed)
    assert not plan.materialized and "plan only" in str(plan)
    model.to_empty(device="cpu")
    report = ti.init_model(model, generator=seed)
    assert report.materialized
    assert [r.init for r in plan] == [r.init for r in report]
    assert torch.equal(model[3].running_var, torch.ones(8))
    _var_close(model[0].weight, 2 / 32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dtype_is_kept(dtype, seed):
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64)).to(dtype)
    ti.init_model(model, generator=seed, distribution="normal")
    assert all(p.dtype == dtype for p in model.parameters())
    _var_close(model[0].weight.float(), 2 / 128)


def test_report_prints_a_table(seed):
    report = ti.init_model(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), generator=seed)
    text = str(report)
    assert "activations found by fx" in text
    assert "0.weight" in text and "kaiming_uniform(a=0, fan_in, relu)" in text
    assert "followed by ReLU '1'" in text
    assert len(report) == 2


def test_unknown_modules_use_their_reset_parameters():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.zeros(3))

        def reset_parameters(self):
            with torch.no_grad():
                self.scale.fill_(2.0)

        def forward(self, x):
            return x * self.scale

    model = nn.Sequential(Custom())
    with pytest.warns(UserWarning, match=r"no rule covers .*0\.scale"):
        report = ti.init_model(model)
    assert torch.equal(model[0].scale, torch.full((3,), 2.0))
    assert report["0.scale"].init == "reset_parameters()"


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)
        self.fn = fn

    def forward(self, x):
        return self.out(self.fn(self.fc(x)))


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (lambda h: h.relu(), "kaiming_uniform(a=0, fan_in, relu)"),
        (lambda h: torch.relu(h.reshape(-1, 8)), "kaiming_uniform(a=0, fan_in, relu)"),
        (lambda h: F.hardswish(F.dropout(h, 0.2)), "kaiming_uniform(a=0, fan_in, relu)"),
        (lambda h: h.sigmoid(), "xavier_uniform"),
        (
            lambda h: F.leaky_relu(h, negative_slope=0.1),
            "kaiming_uniform(a=0.1, fan_in, leaky_relu)",
        ),
        (lambda h: torch.selu(h), "lecun_uniform"),
        (lambda h: F.softmax(h, -1), "xavier_uniform"),
        (lambda h: h * 2.0, "xavier_uniform"),
        (lambda h: F.relu(h / 3.0), "kaiming_uniform(a=0, fan_in, relu)"),
        (lambda h: torch.cat([F.relu(h), F.relu(h)], 0), "kaiming_uniform(a=0, fan_in, relu)"),
        (lambda h: torch.cat([F.relu(h), torch.tanh(h)], 0), "xavier_uniform"),
    ],
)
def test_function_forms_of_activations(fn, expected, seed):
    model = _Fn(fn)
    report = ti.init_model(model, generator=seed)
    assert report.method == "fx"
    assert report["fc.weight"].init == expected


def test_norm_modules_are_recognised_by_name(seed):
    class RMSNorm(nn.Module):  # a look-alike of another library's norm layer
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(4))

        def forward(self, x):
            return x * self.weight

    model = nn.Sequential(nn.Linear(4, 4), RMSNorm(), nn.ReLU())
    report = ti.init_model(model, generator=seed)
    assert torch.equal(model[1].weight, torch.ones(4))
    assert report["0.weight"].init.startswith("kaiming")  # looked through the norm


def test_a_single_init_name_applies_to_every_weight_layer(seed):
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Conv1d(1, 2, 3), nn.LayerNorm(2))
    report = ti.init_model(model, "orthogonal", generator=seed)
    w = model[0].weight.detach().double()
    torch.testing.assert_close(w @ w.T, torch.eye(6, dtype=torch.float64), atol=1e-5, rtol=0)
    assert report["2.weight"].init == "orthogonal"
    assert report["3.weight"].init == "ones"
    assert [b.name for b in ti.init_model(nn.BatchNorm1d(3)).buffers] == ["running_*"]
