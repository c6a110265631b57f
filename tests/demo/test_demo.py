"""End-to-end test of ``traintech demo --quick`` (run once per module) and of its verdict rules."""

import contextlib
import io
import json
import math
import statistics
import sys

import pytest
import torch

from traintech.demo import run_demo
from traintech.demo._dropout_exp import auroc
from traintech.demo._report import json_ready
from traintech.demo._verdict import HELD, IN_PART, NOT_HELD, NOT_TESTED, Check, Claim, fmt, judge

PNGS = (
    "init_activation_std.png",
    "clip_curves.png",
    "norm_accuracy.png",
    "dropout_curves.png",
    "dropout_mc_entropy.png",
)


def _strict(text):
    def bad_constant(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=bad_constant)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    threads_before = torch.get_num_threads()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = run_demo(quick=True, out=str(out), threads=1)
    results = _strict((out / "results.json").read_text())
    return {
        "status": status,
        "stdout": stdout.getvalue(),
        "out": out,
        "results": results,
        "threads_restored": torch.get_num_threads() == threads_before,
    }


def _numbers(demo, name):
    return demo["results"]["experiments"][name]["numbers"]


@pytest.mark.slow
def test_demo_succeeds_and_restores_threads(demo):
    assert demo["status"] == 0
    assert demo["threads_restored"]
    meta = demo["results"]["meta"]
    assert meta["mode"] == "quick"
    assert meta["seeds"] == [0]
    assert meta["experiments"] == ["init", "clip", "norm", "dropout"]


@pytest.mark.slow
def test_he_trains_and_small_init_does_not(demo):
    acc = _numbers(demo, "init")["test_accuracy"]
    assert acc["he"] >= 0.8
    assert acc["small"] <= 0.2
    last = _numbers(demo, "init")["activation_std_last_layer"]
    assert last["small"] < 1e-10 < 0.1 < last["he"]


@pytest.mark.slow
def test_no_clipping_ends_worse_than_norm_clipping_by_a_nat(demo):
    summary = _numbers(demo, "clip")["summary"]
    none = summary["none"]["val_loss"]
    none = math.inf if none == "inf" else none
    assert none - summary["norm"]["val_loss"] >= 1.0
    assert summary["norm"]["min_cosine"] >= 0.9999
    assert summary["value"]["mean_cosine"] < 0.99


@pytest.mark.slow
def test_batchnorm_collapses_at_batch_two_and_trains_at_high_lr(demo):
    numbers = _numbers(demo, "norm")
    by_bs = numbers["test_accuracy_by_batch_size"]
    assert by_bs["group"]["2"] - by_bs["batch"]["2"] >= 0.15
    by_lr = numbers["test_accuracy_by_lr"]
    assert by_lr["batch"]["0.3"] > 0.8
    assert by_lr["none"]["0.3"] < 0.3


@pytest.mark.slow
def test_dropout_helps_char_mlp_and_mc_entropy_separates(demo):
    summary = _numbers(demo, "dropout")["summary"]
    val = summary["char_val_loss"]
    assert val["plain"] - val["dropout"] >= 0.2
    entropy = summary["mean_entropy"]
    assert entropy["wrong"] >= 3 * entropy["correct"]
    assert entropy["ood"] >= 3 * entropy["correct"]


@pytest.mark.slow
def test_verdicts_follow_from_their_checks(demo):
    claims = demo["results"]["claims"]
    assert {c["key"] for c in claims} >= {
        "init.depth", "init.train", "init.tanh", "clip.explode", "clip.direction",
        "clip.adaptive", "norm.small_batch", "norm.high_lr", "dropout.overfit", "dropout.mc",
    }  # fmt: skip
    for claim in claims:
        passed = [check["passed"] for check in claim["checks"]]
        expected = (
            NOT_TESTED if not passed
            else HELD if all(passed)
            else NOT_HELD if not any(passed)
            else IN_PART
        )  # fmt: skip
        assert claim["verdict"] == expected, claim["key"]


@pytest.mark.slow
@pytest.mark.parametrize("name", PNGS)
def test_plots_are_real_pngs_embedded_in_the_html(demo, name):
    data = (demo["out"] / name).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    assert width >= 600 and height >= 300
    html = (demo["out"] / "report.html").read_text()
    assert f"alt='{name}'" in html


@pytest.mark.slow
def test_terminal_summary_lists_every_claim_with_its_verdict(demo):
    lines = demo["stdout"].splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("claim "))
    rows = lines[header + 2 : header + 2 + len(demo["results"]["claims"])]
    for row, claim in zip(rows, demo["results"]["claims"], strict=True):
        assert claim["text"][:40] in row
        assert f"  {claim['verdict']}  " in row
    assert "report.html" in lines[-1]


@pytest.mark.slow
def test_reports_are_well_formed(demo):
    html = (demo["out"] / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert html.count("data:image/png;base64,") == len(PNGS)
    md = (demo["out"] / "report.md").read_text()
    assert md.startswith("# traintech demo report")
    rows = [line for line in md.splitlines() if line.startswith("| ") and "**" in line]
    assert len(rows) == len(demo["results"]["claims"])
    for name in PNGS:
        assert f"![{name}]({name})" in md
    experiments = demo["results"]["experiments"]
    for experiment in experiments.values():
        assert experiment["implementations"]
        assert experiment["plots"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [([1.0, 1.0], HELD), ([1.0, 0.0], IN_PART), ([0.0, 0.0], NOT_HELD), ([math.nan], NOT_HELD)],
)
def test_judge_counts_passing_checks(values, expected):
    checks = [Check(f"x{i}", v, ">=", 0.5) for i, v in enumerate(values)]
    assert judge(checks) == expected


@pytest.mark.parametrize(
    ("op", "value", "passed"),
    [(">=", 1.0, True), (">", 1.0, False), ("<=", 1.0, True), ("<", 1.0, False),
     ("<", 0.5, True), (">", 2.0, True), (">=", math.inf, True), ("<=", math.nan, False)],
)  # fmt: skip
def test_check_compares_with_threshold(op, value, passed):
    assert Check("x", value, op, 1.0).passed is passed


def test_claim_without_checks_is_not_tested_and_bad_input_is_named():
    assert Claim("k", "clip", "text").verdict == NOT_TESTED
    with pytest.raises(ValueError, match="checks"):
        judge([])
    with pytest.raises(ValueError, match="op"):
        Check("x", 1.0, "==", 1.0)


def test_claim_serializes_each_check_with_its_outcome():
    claim = Claim("k", "init", "t", [Check("a", 2.0, ">=", 1.0), Check("b", 0.0, ">=", 1.0)])
    out = claim.to_dict()
    assert out["verdict"] == IN_PART
    assert [c["passed"] for c in out["checks"]] == [True, False]
    assert claim.key_numbers() == "a 2; b 0"


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.0, "0"), (0.12345, "0.123"), (12345.0, "1.23e+04"), (1e-5, "1.00e-05"),
     (math.nan, "nan"), (-math.inf, "-inf")],
)  # fmt: skip
def test_fmt(value, text):
    assert fmt(value) == text


def test_json_ready_makes_strict_json():
    data = {"a": [1.0, math.nan, math.inf], "b": {2: -math.inf}}
    assert _strict(json.dumps(json_ready(data), allow_nan=False)) == {
        "a": [1.0, "nan", "inf"],
        "b": {"2": "-inf"},
    }


def test_auroc_matches_pairwise_definition():
    gen = torch.Generator().manual_seed(0)
    neg = torch.randint(0, 5, (40,), generator=gen).double()
    pos = torch.randint(2, 8, (30,), generator=gen).double()
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p in pos.tolist() for n in neg.tolist()]
    assert auroc(neg, pos) == pytest.approx(statistics.fmean(pairs), abs=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"only": ["init", "bogus"]}, "only"), ({"only": []}, "only"), ({"seeds": 0}, "seeds"),
     ({"threads": 0}, "threads")],
)  # fmt: skip
def test_run_demo_rejects_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        run_demo(quick=True, out=str(tmp_path), **kwargs)
    assert not any(tmp_path.iterdir())


def test_missing_optional_dependency_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert run_demo(quick=True, out=str(tmp_path / "x"), only=["norm"]) == 2
    err = capsys.readouterr().err
    assert "tqdm" in err and "pip install 'traintech[demo]'" in err
    assert not (tmp_path / "x").exists()
