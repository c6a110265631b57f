"""Repeated blocks are traced once; the result equals a full trace, and differing blocks differ."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import traintech.init as ti
from traintech.init import _followers


class Block(nn.Module):
    def __init__(self, width=16, act=True):
        super().__init__()
        self.act = act
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x):
        h = self.fc1(F.layer_norm(x, x.shape[-1:]))
        if self.act:
            h = F.silu(h)
        return x + self.fc2(h)


class PreAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return x + self.fc(F.leaky_relu(x, 0.2))


class Net(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(F.relu(x))


def _without_dedupe(monkeypatch, model):
    monkeypatch.setattr(_followers, "_repeated_blocks", lambda root: {})
    return _followers.find_followers(model)


@pytest.mark.parametrize(
    "blocks",
    [
        lambda: [Block() for _ in range(4)],
        lambda: [PreAct() for _ in range(3)],
        lambda: [Block(), PreAct(), Block(), PreAct()],
        lambda: [nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 16)) for _ in range(3)],
    ],
)
def test_tracing_repeated_blocks_once_gives_the_full_trace_result(blocks, monkeypatch):
    model = Net(blocks())
    assert len(_followers._repeated_blocks(model)) >= 2
    fast = _followers.find_followers(model)
    full = _without_dedupe(monkeypatch, model)
    assert fast.method == full.method == "fx"
    assert fast.activation == full.activation
    assert "stem" in fast.activation and "head" in fast.activation


def test_blocks_that_differ_in_configuration_are_traced_separately():
    model = Net([Block(), Block(), Block(act=False)])
    assert _followers._repeated_blocks(model) != {}
    report = ti.init_model(model)
    assert report["blocks.0.fc1.weight"].init.startswith("kaiming")
    assert report["blocks.1.fc1.weight"].init.startswith("kaiming")
    assert report["blocks.2.fc1.weight"].init == "xavier_uniform"
    # the last block's output reaches F.relu before the head; the others reach the next block
    assert report["blocks.2.fc2.weight"].init.startswith("kaiming")
    assert report["blocks.0.fc2.weight"].init == "xavier_uniform"


def test_preactivation_blocks_see_their_input_activation():
    model = Net([PreAct(), PreAct()])
    followers = _followers.find_followers(model)
    # stem feeds leaky_relu inside block 0 and, through the residual stream, the final relu
    assert followers.activation["stem"].family == "none"
    assert "mixed consumers" in followers.activation["stem"].source
    single = nn.Sequential(nn.Linear(16, 16), PreAct(), PreAct())
    assert _followers.find_followers(single).activation["0"].family == "none"


def test_repeated_untraceable_blocks_fall_back_to_module_order():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.Tanh()

        def forward(self, x):
            if x.sum() > 0:
                return self.act(self.fc(x))
            return x

    model = nn.Sequential(Untraceable(), Untraceable())
    followers = _followers.find_followers(model)
    assert followers.method == "fx"
    assert followers.how["0.fc"] == "module order"
    assert followers.activation["1.fc"].family == "tanh"


def test_blocks_configured_by_a_dict_are_not_merged():
    class Configured(nn.Module):
        def __init__(self, act):
            super().__init__()
            self.cfg = {"act": act}
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            h = self.fc(x)
            return torch.tanh(h) if self.cfg["act"] == "tanh" else F.relu(h)

    model = nn.Sequential(Configured("tanh"), Configured("relu"), Configured("relu"))
    followers = _followers.find_followers(model)
    assert [followers.activation[f"{i}.fc"].family for i in range(3)] == ["tanh", "relu", "relu"]


def test_math_on_traced_values_still_traces():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return F.relu(self.fc(x) / math.sqrt(x.size(-1)))

    followers = _followers.find_followers(nn.Sequential(Scaled(), Scaled()))
    assert followers.method == "fx"
    assert followers.activation["0.fc"].family == "relu"
