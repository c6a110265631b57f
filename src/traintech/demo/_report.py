"""The demo's outputs: ``results.json``, ``report.md`` and a self-contained ``report.html``."""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from traintech.demo._common import ExperimentResult
from traintech.demo._verdict import HELD, INCONCLUSIVE, NOT_HELD, NOT_TESTED

_BADGE = {
    HELD: "#2e7d32",
    INCONCLUSIVE: "#ef6c00",
    NOT_HELD: "#c62828",
    NOT_TESTED: "#757575",
}

_RULE = (
    "A claim **held** when every check passed on the mean and every effect's 95% interval "
    "across seeds excludes no effect; **inconclusive** when the checks passed but an interval "
    "includes no effect; **did not hold** when any check failed on the mean. Thresholds are "
    "written in the code (`traintech/demo/_*_exp.py`) and printed at full precision."
)


def json_ready(value: Any) -> Any:
    """Replace non-finite floats by the strings ``"nan"``, ``"inf"``, ``"-inf"`` (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def write_json(results: Sequence[ExperimentResult], meta: dict[str, Any], path: Path) -> None:
    """Every number, setting, claim and verdict, as strict JSON."""
    payload = {
        "meta": meta,
        "claims": [c.to_dict() for r in results for c in r.claims],
        "experiments": {
            r.name: {
                "title": r.title,
                "seconds": r.seconds,
                "cpu_seconds": r.cpu_seconds,
                "settings": r.settings,
                "implementations": r.sources,
                "numbers": r.numbers,
                "plots": r.plots,
            }
            for r in results
        },
    }
    path.write_text(json.dumps(json_ready(payload), indent=1, allow_nan=False) + "\n")


def _implementations(result: ExperimentResult) -> str:
    names = [f"{name} (defined in {module})" for name, module in sorted(result.sources.items())]
    return "Implementations tested (traintech's own, read from the experiment's imports): " + (
        ", ".join(names) + "." if names else "none."
    )


def write_markdown(results: Sequence[ExperimentResult], meta: dict[str, Any], path: Path) -> None:
    """A plain-text report: the summary table, then each experiment with its checks and plots."""
    lines = [
        "# traintech demo report",
        "",
        f"Run: {meta['mode']} mode, seeds {meta['seeds']}, {meta['threads']} torch thread(s) "
        f"per experiment, {meta.get('jobs', 1)} parallel job(s), "
        f"torch {meta['torch']}, {meta['seconds']:.0f} s ({meta['cpu_seconds']:.0f} s of CPU). "
        f"Text: {meta.get('text_source', 'n/a')}.",
        "",
        _RULE,
        "",
        "| claim | verdict | what was compared |",
        "|---|---|---|",
    ]
    for r in results:
        for c in r.claims:
            lines.append(f"| {c.text} | **{c.verdict}** | {c.sentence} |")
    for r in results:
        lines += [
            "",
            f"## {r.title}",
            "",
            f"Wall time {r.seconds:.1f} s ({r.cpu_seconds:.1f} s of CPU).",
        ]
        lines += ["", _implementations(r)]
        for c in r.claims:
            lines += ["", f"### {c.text}: {c.verdict}", "", c.sentence, ""]
            lines += [f"- check: {check.describe()}" for check in c.checks]
            lines += [f"- effect: {e.describe()}" for e in c.effects]
            if c.note:
                lines += [f"- {c.note}"]
        for name, text in r.plots.items():
            lines += ["", f"![{name}]({name})", "", f"*{text}*"]
    path.write_text("\n".join(lines) + "\n")


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;width:100%;font-size:14px}
td,th{border:1px solid #ccc;padding:6px;vertical-align:top;text-align:left}
.badge{color:#fff;border-radius:4px;padding:2px 6px;white-space:nowrap;font-weight:600}
img{max-width:100%;border:1px solid #ddd}
.caption{font-style:italic;color:#444;margin-bottom:2em}
.note{background:#fff8e1;padding:6px 10px;border-left:4px solid #ef6c00}
li.pass::marker{color:#2e7d32} li.fail::marker{color:#c62828}
"""


def _badge(verdict: str) -> str:
    return f'<span class="badge" style="background:{_BADGE[verdict]}">{html.escape(verdict)}</span>'


def write_html(results: Sequence[ExperimentResult], meta: dict[str, Any], out: Path) -> None:
    """A self-contained HTML report (PNG plots embedded as base64)."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>traintech demo report</title>",
        f"<style>{_CSS}</style></head><body><h1>traintech demo report</h1>",
        f"<p>{esc(meta['mode'])} mode, seeds {esc(str(meta['seeds']))}, {meta['threads']} torch "
        f"thread(s), torch {esc(meta['torch'])}, {meta['seconds']:.0f} s "
        f"({meta['cpu_seconds']:.0f} s of CPU). Text: "
        f"{esc(str(meta.get('text_source', 'n/a')))}.</p>",
        f"<p>{esc(_RULE).replace('**', '')}</p>",
        "<table><tr><th>claim</th><th>verdict</th><th>what was compared</th></tr>",
    ]
    for r in results:
        for c in r.claims:
            parts.append(
                f"<tr><td>{esc(c.text)}</td><td>{_badge(c.verdict)}</td>"
                f"<td>{esc(c.sentence)}</td></tr>"
            )
    parts.append("</table>")
    for r in results:
        parts.append(
            f"<h2>{esc(r.title)}</h2><p>Wall time {r.seconds:.1f} s "
            f"({r.cpu_seconds:.1f} s of CPU).</p>"
        )
        parts.append(f"<p class='note'>{esc(_implementations(r))}</p>")
        for c in r.claims:
            parts.append(f"<h3>{esc(c.text)} {_badge(c.verdict)}</h3><p>{esc(c.sentence)}</p><ul>")
            for check in c.checks:
                css = "pass" if check.passed else "fail"
                parts.append(f"<li class='{css}'>check: {esc(check.describe())}</li>")
            for e in c.effects:
                css = "pass" if e.excludes_null else "fail"
                parts.append(f"<li class='{css}'>effect: {esc(e.describe())}</li>")
            if c.note:
                parts.append(f"<li>{esc(c.note)}</li>")
            parts.append("</ul>")
        for name, text in r.plots.items():
            data = base64.b64encode((out / name).read_bytes()).decode("ascii")
            parts.append(
                f"<img alt='{esc(name)}' src='data:image/png;base64,{data}'>"
                f"<p class='caption'>{esc(text)}</p>"
            )
    parts.append("</body></html>\n")
    (out / "report.html").write_text("".join(parts))
