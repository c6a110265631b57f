import math

import pytest
import torch

from traintech.monitor import SpikeDetector


def reference_scores(values, alpha, z_thresh, warmup, rel_floor):
    """Naive float64 re-statement of the EMA z-score rule (with winsorized updates)."""
    out, mean, var, seen = [], 0.0, 0.0, []
    for x in values:
        if not math.isfinite(x):
            out.append((True, math.nan))
            continue
        if len(seen) < warmup:
            seen.append(x)
            if len(seen) == warmup:
                mean = sum(seen) / warmup
                var = sum((s - mean) ** 2 for s in seen) / warmup
            out.append((False, 0.0))
            continue
        std = max(math.sqrt(var), rel_floor * abs(mean), 1e-12)
        z = (x - mean) / std
        spike = z > z_thresh
        used = mean + z_thresh * std if spike else x
        delta = used - mean
        mean = mean + (1 - alpha) * delta
        var = alpha * (var + (1 - alpha) * delta**2)
        out.append((spike, z))
    return out


@pytest.mark.parametrize("alpha,z_thresh,warmup", [(0.98, 4.0, 20), (0.9, 2.5, 5), (0.5, 3.0, 2)])
def test_scores_match_float64_reference(alpha, z_thresh, warmup, seed):
    values = (1.0 + 0.1 * torch.randn(200, generator=seed, dtype=torch.float64)).tolist()
    values[60] = 40.0
    values[61] = float("nan")
    values[120:125] = [9.0] * 5
    det = SpikeDetector(alpha, z_thresh, warmup)
    got = [det.update(v) for v in values]
    ref = reference_scores(values, alpha, z_thresh, warmup, 0.01)
    assert [g[0] for g in got] == [r[0] for r in ref]
    torch.testing.assert_close(
        torch.tensor([g[1] for g in got], dtype=torch.float64),
        torch.tensor([r[1] for r in ref], dtype=torch.float64),
        rtol=1e-12, atol=1e-12, equal_nan=True,
    )
    assert got[60][0] and got[61][0] and got[120][0]
    if z_thresh >= 4.0:  # Gaussian noise of 0.1 never reaches 4 sigma in 40 draws here
        assert sum(g[0] for g in got[warmup:60]) == 0


def test_upward_only_and_nonfinite_leaves_state():
    det = SpikeDetector(warmup=3)
    for v in [1.0, 1.2, 0.8]:
        det.update(v)
    before = det.state_dict()
    assert det.update(float("inf")) == (True, pytest.approx(math.nan, nan_ok=True))
    assert det.state_dict() == before
    spike, z = det.update(-100.0)
    assert not spike and z < -100


def test_state_dict_resumes_bit_for_bit(seed):
    values = (torch.rand(100, generator=seed, dtype=torch.float64) * 3).tolist()
    a = SpikeDetector(warmup=10)
    for v in values[:37]:
        a.update(v)
    b = SpikeDetector()
    b.load_state_dict(a.state_dict())
    assert [a.update(v) for v in values[37:]] == [b.update(v) for v in values[37:]]
    assert a.state_dict() == b.state_dict()


@pytest.mark.parametrize(
    "kwargs,match",
    [({"alpha": 1.0}, "alpha"), ({"alpha": 0.0}, "alpha"), ({"z_thresh": 0.0}, "z_thresh"),
     ({"warmup": 1}, "warmup"), ({"rel_floor": -1.0}, "rel_floor")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpikeDetector(**kwargs)


def test_bad_warmup_type_and_version():
    with pytest.raises(TypeError, match="warmup"):
        SpikeDetector(warmup=2.5)
    det = SpikeDetector()
    sd = det.state_dict() | {"_version": 99}
    with pytest.raises(ValueError, match="_version"):
        det.load_state_dict(sd)
