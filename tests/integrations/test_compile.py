"""torch.compile: the guarded step and the stateful clippers break once and never recompile.

Graphs are counted with a counting backend (each compiled graph calls it once); graph breaks
with ``torch._dynamo.explain``, keeping those whose innermost frame is traintech's code.
"""

import math
from pathlib import Path

import pytest
import torch

import traintech
from traintech.clip import AGC, EMAClip, GuardedStep, NormClip, QuantileClip, ZClip

pytestmark = pytest.mark.slow  # each test compiles (about 5-10 s on 2 loaded cores)

SRC = str(Path(traintech.__file__).parent)

CLIPPERS = {
    "ZClip": lambda: ZClip(warmup_steps=3),
    "EMAClip": lambda: EMAClip(warmup_steps=3),
    "QuantileClip": lambda: QuantileClip(window=4),
    "AGC": lambda: AGC(0.01),
    "NormClip": lambda: NormClip(0.5),
}


def _counting_backend():
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    return backend, graphs


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


def _backward(model, step, nan=False):
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(step)) * (1 + step % 3)
    model(x).pow(2).mean().backward()
    if nan:
        model[0].weight.grad[0, 0] = math.nan


@pytest.fixture(autouse=True)
def _reset():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", list(CLIPPERS))
def test_compiled_guarded_step_never_recompiles_and_matches_eager(name):
    model, opt = _setup()
    ref_model, ref_opt = _setup()
    guard, ref = GuardedStep(opt, CLIPPERS[name]()), GuardedStep(ref_opt, CLIPPERS[name]())
    backend, graphs = _counting_backend()
    step = torch.compile(guard.step, backend=backend)
    warm = 4  # the first calls see both branches (a NaN skip at step 1) and the warm-up end
    for i in range(12):
        if i == warm:
            compiled_after_warmup = len(graphs)
        for m, fn in ((model, step), (ref_model, ref.step)):
            _backward(m, i, nan=i == 1)
            fn()
            m.zero_grad()
    assert len(graphs) == compiled_after_warmup, "a step after the warm-up recompiled"
    assert guard.steps_skipped == ref.steps_skipped == 1
    for a, b in zip(model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["ZClip", "AGC"])
def test_compiled_guarded_step_breaks_the_graph_once_in_traintech(name):
    model, opt = _setup()
    guard = GuardedStep(opt, CLIPPERS[name]())
    _backward(model, 0)
    explained = torch._dynamo.explain(guard.step)()
    ours = {(f.filename, f.lineno) for br in explained.break_reasons
            for f in br.user_stack[-1:] if f.filename.startswith(SRC)}
    assert len(ours) == 1, ours
    ((filename, _),) = ours
    assert filename.endswith("_guarded.py")


@pytest.mark.parametrize("name", ["ZClip", "EMAClip", "QuantileClip"])
def test_compiled_decide_has_no_graph_break_and_no_recompile(name):
    clipper, ref = CLIPPERS[name](), CLIPPERS[name]()
    backend, graphs = _counting_backend()
    decide = torch.compile(clipper.decide, backend=backend, fullgraph=True)
    norms = [1.0, 1.2, math.nan, 0.9, 1.1, 9.0, 1.0, math.inf, 1.3, 30.0, 1.0, 1.1]
    for i, x in enumerate(norms):
        if i == 2:
            compiled = len(graphs)
        got, want = decide(torch.tensor(x)), ref.decide(torch.tensor(x))
        torch.testing.assert_close(got.coef, want.coef, rtol=1e-12, atol=0, equal_nan=True)
        assert bool(got.skip) == bool(want.skip)
    assert len(graphs) == compiled == 1


def test_compiled_model_with_eager_guarded_step_compiles_once():
    """The documented recipe: compile the model, keep the guarded step eager."""
    model, opt = _setup()
    backend, graphs = _counting_backend()
    compiled = torch.compile(model, backend=backend)
    guard = GuardedStep(opt, ZClip(warmup_steps=2))
    for i in range(8):
        x = torch.randn(3, 4, generator=torch.Generator().manual_seed(i)) * (1 + i)
        compiled(x).pow(2).mean().backward()
        if i == 3:
            model[0].weight.grad[0, 0] = math.nan
        guard.step()
        opt.zero_grad()
    assert len(graphs) == 1
    assert guard.steps_skipped == 1
