"""The labelled corpus: every pathology named right, no advice in the wrong direction."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from _corpus import CORPUS, WRONG_FOR_DIVERGENCE, confusion_table, exploding_mlp, exploding_rnn

DOCS = Path(__file__).resolve().parents[2] / "docs" / "monitor.md"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def found() -> dict[str, list]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = {}
            for name, case in CORPUS.items():
                mon = case.build()
                out[name] = mon.findings()
                mon.close()
            return out
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(CORPUS))
def test_each_run_gets_its_rule_and_nothing_inverted(found, name):
    case = CORPUS[name]
    rules = [f.rule for f in found[name]]
    if case.expected is None:
        assert rules == [], f"healthy run {name} got {rules}"
    else:
        assert case.expected in rules, f"{name}: expected {case.expected}, got {rules}"
    assert not set(rules) & case.forbidden, f"{name}: inverted advice {rules}"


@pytest.mark.parametrize("name", ["demo_exploding_rnn", "exploding_rnn", "exploding_mlp"])
def test_diverging_runs_never_hear_the_learning_rate_is_too_low(found, name):
    text = " ".join(f.message for f in found[name]).lower()
    assert "too low" not in text and "vanish" not in text
    assert "lower the learning rate" in text
    explode = next(f for f in found[name] if f.rule == "exploding_gradients")
    assert explode.severity == "error"
    assert explode.evidence["peak_norm"] >= 10 * explode.evidence["first_norm"]


@pytest.mark.parametrize("build", [exploding_rnn, exploding_mlp])
@pytest.mark.parametrize("steps", [3, 4])
def test_divergence_is_seen_in_the_first_steps(build, steps):
    rules = {f.rule for f in build(steps=steps).findings()}
    assert "exploding_gradients" in rules
    assert not rules & WRONG_FOR_DIVERGENCE


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", ["exploding_rnn", "vanishing", "lr_too_low", "healthy_rnn"])
def test_other_seeds_agree(name, seed):
    case = CORPUS[name]
    rules = {f.rule for f in case.build.__call__(seed).findings()}  # type: ignore[call-arg]
    assert (case.expected in rules) if case.expected else not rules
    assert not rules & case.forbidden


def test_findings_carry_rule_advice_severity_and_evidence(found):
    for findings in found.values():
        for f in findings:
            assert f.advice == f.message and f.severity in ("error", "warning", "info")
            assert f.evidence, f.rule


def test_saturated_clipping_advice_knows_the_clipper(found):
    (f,) = [f for f in found["clip_saturated"] if f.rule == "clipping_saturated"]
    assert f.evidence["clipper"] == "NormClip" and "NormClip's threshold" in f.message


def test_docs_show_this_corpus_confusion_table(found, capsys):
    table = confusion_table({k: [f.rule for f in v] for k, v in found.items()})
    with capsys.disabled():
        print("\n" + table)
    assert "WRONG" not in table
    docs = DOCS.read_text()
    match = re.search(r"<!-- corpus-table -->\n(.*?)\n<!-- /corpus-table -->", docs, re.S)
    assert match is not None, "docs/monitor.md lost its corpus table markers"
    assert match.group(1).strip() == table.strip(), (
        "docs/monitor.md's confusion table differs from the corpus: regenerate it with "
        "`PYTHONPATH=src python tests/monitor/_corpus.py`"
    )
