"""Seed statistics, verdict rule, number formatting and the implementation lookup."""

import math
import statistics

import pytest
import torch

from traintech.demo._impl import EXPERIMENT_MODULES, implementation_sources
from traintech.demo._norm_exp import max_trainable_lr
from traintech.demo._runner import LineProgress, _validate, default_jobs, summary_lines
from traintech.demo._stats import Interval, auroc, bootstrap_auroc, seed_interval, t_quantile
from traintech.demo._transformer_exp import count_spikes
from traintech.demo._verdict import (
    HELD,
    INCONCLUSIVE,
    NOT_HELD,
    NOT_TESTED,
    Check,
    Claim,
    Effect,
    exact,
    fmt,
    judge,
)


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 9, 30):
        assert t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-12)
    assert t_quantile(1000) == pytest.approx(stats.norm.ppf(0.975), rel=1e-12)
    with pytest.raises(ValueError, match="df must be a positive integer, got 0"):
        t_quantile(0)


def test_seed_interval_is_the_t_interval_of_a_float64_reference():
    values = [0.31, 0.12, 0.47, 0.25]
    n = len(values)
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = 3.1824463052837078 * sd / math.sqrt(n)
    got = seed_interval(values)
    assert got.mean == pytest.approx(m, abs=1e-15)
    assert (got.low, got.high) == pytest.approx((m - half, m + half), abs=1e-14)
    assert got.values == tuple(values)
    assert "95% t interval over 4 seeds" == got.kind


def test_seed_interval_with_few_seeds_or_divergence_says_so():
    one = seed_interval([2.0])
    assert (one.mean, one.low, one.high) == (2.0, 2.0, 2.0) and "too few" in one.kind
    diverged = seed_interval([math.inf, 1.0, 2.0])
    assert diverged.low == 1.0 and diverged.high == math.inf and "diverged" in diverged.kind
    assert math.isnan(seed_interval([math.nan, 1.0, 2.0]).low)
    with pytest.raises(ValueError, match="values is empty"):
        seed_interval([])


def test_auroc_matches_pairwise_definition():
    gen = torch.Generator().manual_seed(0)
    neg = torch.randint(0, 5, (40,), generator=gen).double()
    pos = torch.randint(2, 8, (30,), generator=gen).double()
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p in pos.tolist() for n in neg.tolist()]
    assert auroc(neg, pos) == pytest.approx(statistics.fmean(pairs), abs=1e-12)
    with pytest.raises(ValueError, match="0 negatives"):
        auroc(torch.empty(0), pos)


def test_bootstrap_interval_brackets_the_estimate_and_repeats():
    gen = torch.Generator().manual_seed(1)
    neg = torch.randn(200, generator=gen)
    pos = torch.randn(100, generator=gen) + 1.0
    est, low, high = bootstrap_auroc(neg, pos, resamples=300)
    assert est == pytest.approx(auroc(neg, pos))
    assert low < est < high and 0.6 < low and high < 0.9
    assert bootstrap_auroc(neg, pos, resamples=300) == (est, low, high)
    diff = bootstrap_auroc(neg, pos, resamples=300, baseline=(neg, pos))
    assert diff == (0.0, 0.0, 0.0)  # a method against itself: exactly no effect


def _effect(low, high, op=">", null=0.0):
    return Effect("e", Interval((low + high) / 2, low, high, "k", (low, high)), op, null)


def test_verdict_rule():
    passing, failing = Check("a", 1.0, ">", 0.0), Check("b", -1.0, ">", 0.0)
    assert judge([passing], [_effect(0.1, 2.0)]) == HELD
    assert judge([passing], [_effect(-0.1, 2.0)]) == INCONCLUSIVE
    assert judge([passing, failing], [_effect(0.1, 2.0)]) == NOT_HELD
    assert judge([Check("n", math.nan, "<", 1.0)]) == NOT_HELD
    assert judge([passing], [_effect(-2.0, -0.1, "<")]) == HELD
    assert judge([passing], [_effect(0.4, 0.7, ">", 0.5)]) == INCONCLUSIVE
    assert Claim("k", "x", "t").verdict == NOT_TESTED
    with pytest.raises(ValueError, match="checks is empty"):
        judge([])
    with pytest.raises(ValueError, match="op must be one of"):
        Check("x", 1.0, "==", 1.0)
    with pytest.raises(ValueError, match="op must be '>' or '<', got '>='"):
        _effect(0.0, 1.0, ">=")


def test_claim_serializes_checks_and_effects():
    claim = Claim(
        "k", "clip", "t", "compared", [Check("a", 2.0, ">=", 0.9999)], [_effect(0.5, 1.5)]
    )
    out = claim.to_dict()
    assert out["verdict"] == HELD and out["sentence"] == "Held: compared"
    assert out["checks"] == [
        {"name": "a", "value": 2.0, "op": ">=", "threshold": 0.9999, "passed": True}
    ]
    effect = out["effects"][0]
    assert (effect["low"], effect["high"], effect["excludes_no_effect"]) == (0.5, 1.5, True)
    assert effect["per_seed"] == [0.5, 1.5]


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.9999, "0.9999"), (1e-10, "1e-10"), (0.1 + 0.2, "0.30000000000000004"), (1000.0, "1000.0")],
)
def test_thresholds_print_at_full_precision(value, text):
    assert exact(value) == text
    assert float(exact(value)) == value
    assert f"(>= {text}:" in Check("x", 5.0, ">=", value).describe()


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.0, "0"), (0.12345, "0.1235"), (123456.0, "1.235e+05"), (1e-5, "1.000e-05"),
     (math.nan, "nan"), (-math.inf, "-inf")],
)  # fmt: skip
def test_fmt(value, text):
    assert fmt(value) == text


def test_summary_never_truncates():
    from traintech.demo._common import ExperimentResult

    long = "a claim whose text is far longer than one terminal line " * 4
    claim = Claim("k", "x", long.strip(), "compared " * 30, [Check("c" * 130, 0.123456, "<", 1.0)])
    lines = summary_lines([ExperimentResult("x", "title", {}, {}, [claim])], width=60)
    joined = " ".join(line.strip() for line in lines)
    assert long.strip() in joined
    assert "c" * 130 in joined and "0.1235" in joined and "(< 1.0: pass)" in joined
    assert "..." not in joined


def test_line_progress_prints_quarters(capsys):
    import sys

    progress = LineProgress("norm", 8, sys.stdout)
    for _ in range(8):
        progress.update()
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in out] == ["25%", "50%", "75%", "100%"]
    assert out[-1].startswith("[norm] 100% (8/8 runs")


def test_implementation_sources_reads_the_experiment_imports():
    import traintech.clip
    import traintech.norm

    sources = implementation_sources("transformer")
    assert sources == {
        "traintech.clip.AGC": traintech.clip.AGC.__module__,
        "traintech.clip.ZClip": traintech.clip.ZClip.__module__,
        "traintech.clip.clip_grad_norm_": traintech.clip.clip_grad_norm_.__module__,
        "traintech.norm.LayerNorm": traintech.norm.LayerNorm.__module__,
        "traintech.norm.RMSNorm": traintech.norm.RMSNorm.__module__,
    }
    for name in EXPERIMENT_MODULES:
        assert implementation_sources(name)
        assert all(
            not m.startswith("traintech.demo") for m in implementation_sources(name).values()
        )
    with pytest.raises(ValueError, match="experiment must be one of .* got 'bogus'"):
        implementation_sources("bogus")


def test_count_spikes():
    flat = [3.0] * 30
    assert count_spikes(flat, 30, 20, 0.5) == 0
    assert count_spikes([*flat[:25], 3.6, *flat[:4]], 30, 20, 0.5) == 1
    assert count_spikes([*flat[:10], math.inf], 30, 20, 0.5) == 20  # 1 non-finite + 19 not run


def test_max_trainable_lr():
    assert max_trainable_lr({0.01: 0.9, 0.1: 0.85, 1.0: 0.1}, 0.8) == 0.1
    assert max_trainable_lr({0.01: 0.2}, 0.8) == 0.0


def test_jobs_default_and_validation():
    assert 1 <= default_jobs(5) <= 5
    assert default_jobs(1) == 1
    with pytest.raises(ValueError, match="jobs must be a positive integer or None, got 0"):
        _validate(["init"], None, 1, 0)


def test_minus_is_per_seed_difference_and_refuses_unequal_lengths():
    from traintech.demo._common import minus

    assert minus([3.0, 1.5, math.inf], [1.0, 2.0, 0.0]) == [2.0, -0.5, math.inf]
    with pytest.raises(ValueError):
        minus([1.0, 2.0], [1.0])
