"""``traintech report``: render a monitor log as one self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from traintech.monitor._diagnosis import diagnose, format_findings
from traintech.monitor._runs import merge_meta, run_of
from traintech.monitor._writers import JSONL_NAME

_INSTALL = "pip install 'traintech[monitor]'"


def read_runs(path: str | Path) -> dict[int, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Read every run of a monitor JSONL log: ``{run id: (meta, records)}``, in file order.

    Each line carries the id of its run (a log written before run ids existed is one run, id
    1). A line that is not valid JSON (e.g. truncated by a crash) is skipped with a
    ``UserWarning`` naming the file and line; the rest is read. A run whose ``meta`` line has
    no step after it is kept, with no records.

    Args:
        path: the ``monitor.jsonl`` file, or the folder holding it.

    Raises:
        FileNotFoundError: when there is no log at ``path``.
    """
    file = Path(path)
    if file.is_dir():
        file = file / JSONL_NAME
    if not file.is_file():
        raise FileNotFoundError(f"no monitor log at {str(file)!r} (expected {JSONL_NAME})")
    runs: dict[int, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    current = 1
    with open(file, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                warnings.warn(
                    f"{file}:{number}: skipped a corrupt or truncated line ({err.msg})",
                    UserWarning,
                    stacklevel=2,
                )
                continue
            if not isinstance(obj, dict):
                warnings.warn(f"{file}:{number}: skipped a line that is not an object",
                              UserWarning, stacklevel=2)
                continue
            current = run_of(obj, current)
            meta, records = runs.setdefault(current, ({}, []))
            if "meta" in obj and isinstance(obj["meta"], dict):
                merge_meta(meta, obj["meta"])
            elif isinstance(obj.get("step"), int):
                records.append({k: v for k, v in obj.items() if k != "run"})
    return runs


def read_log(
    path: str | Path, run: int | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read one run of a monitor JSONL log: its merged ``meta`` lines and its step records.

    Args:
        path: the ``monitor.jsonl`` file, or the folder holding it.
        run: the run id (see :func:`read_runs`); None: the last run in the log.

    Returns:
        ``(meta, records)``; ``({}, [])`` for a log with no readable line.

    Raises:
        FileNotFoundError: when there is no log at ``path``.
        ValueError: when ``run`` is not a run of the log (the message lists them).
    """
    runs = read_runs(path)
    if run is None:
        return runs[max(runs)] if runs else ({}, [])
    if run not in runs:
        raise ValueError(f"run={run!r} is not in the log at {str(path)!r}; its runs: "
                         f"{sorted(runs) or 'none'}")
    return runs[run]


def _figure(height: float = 3.2) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(f"the report's plots need matplotlib: {_INSTALL}") from err
    return Figure(figsize=(9, height), dpi=90, layout="constrained")


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _events(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for r in records for e in r.get("events", []) if e.get("kind") == kind]


def _mark_incidents(ax: Any, records: list[dict[str, Any]]) -> None:
    for i, e in enumerate(_events(records, "nonfinite")):
        ax.axvline(e["step"], color="black", lw=0.8, label="NaN/Inf" if i == 0 else None)
    for i, e in enumerate(_events(records, "rollback")):
        ax.axvline(e["step"], color="purple", ls="--", lw=0.8,
                   label="rollback" if i == 0 else None)


def _plot_grad_norm(records: list[dict[str, Any]]) -> str | None:
    pts = [(r["step"], r["grad_norm"]) for r in records if r.get("grad_norm")]
    if not pts:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(*zip(*pts, strict=True), lw=1, label="gradient norm (after clipping)")
    clipped = [r for r in records if r.get("clip") and r["clip"].get("norm")]
    if clipped:
        ax.plot([r["step"] for r in clipped], [r["clip"]["norm"] for r in clipped], lw=1,
                label="norm before clipping")
        thr = [(r["step"], r["clip"]["threshold"]) for r in clipped if r["clip"].get("threshold")]
        if thr:
            ax.plot(*zip(*thr, strict=True), color="gray", ls=":", label="clip threshold")
        hits = [r for r in clipped if (r["clip"].get("coef") or 1.0) < 1.0]
        if hits:
            ax.scatter([r["step"] for r in hits], [r["clip"]["norm"] for r in hits], s=10,
                       color="orange", zorder=3, label=f"clipped ({len(hits)} steps)")
    spikes = [e for e in _events(records, "grad_spike") if e.get("value")]
    if spikes:
        ax.scatter([e["step"] for e in spikes], [e["value"] for e in spikes], marker="x",
                   color="red", zorder=4, label="spike")
    _mark_incidents(ax, records)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("Global gradient norm")
    ax.legend(fontsize=8)
    return _png(fig)


def _plot_loss(records: list[dict[str, Any]]) -> str | None:
    pts = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    if not pts:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(*zip(*pts, strict=True), lw=1, label="loss")
    spikes = [e for e in _events(records, "loss_spike") if e.get("value") is not None]
    if spikes:
        ax.scatter([e["step"] for e in spikes], [e["value"] for e in spikes], marker="x",
                   color="red", zorder=3, label=f"spike ({len(spikes)})")
    _mark_incidents(ax, records)
    if all(v > 0 for _, v in pts) and max(v for _, v in pts) / min(v for _, v in pts) > 100:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("Loss")
    ax.legend(fontsize=8)
    return _png(fig)


def _plot_heatmap(records: list[dict[str, Any]], meta: dict[str, Any], key: str,
                  title: str) -> str | None:
    rows = [r for r in records if r.get(key)]
    names = list(meta.get("params", {})) or sorted({n for r in rows for n in r[key]})
    names = [n for n in names if any(r[key].get(n) is not None for r in rows)]
    if not rows or not names:
        return None
    stride = max(1, len(rows) // 1500)
    rows = rows[::stride]
    grid = [
        [math.log10(v) if (v := r[key].get(n)) is not None and v > 0 else math.nan for r in rows]
        for n in names
    ]
    fig = _figure(max(2.5, 0.9 + 0.18 * len(names)))
    ax = fig.add_subplot()
    steps = [r["step"] for r in rows]
    image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis",
                      extent=(steps[0] - 0.5, steps[-1] + 0.5, len(names) - 0.5, -0.5))
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("step")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="log10")
    return _png(fig)


def _plot_activations(records: list[dict[str, Any]]) -> str | None:
    rows = [r for r in records if r.get("activations")]
    if not rows:
        return None
    names = list(dict.fromkeys(n for r in rows for n in r["activations"]))
    fig = _figure(6.0)
    axes = fig.subplots(3, 1, sharex=True)
    for key, ax, label in zip(("mean", "std", "dead"), axes,
                              ("mean", "standard deviation", "dead-unit fraction"), strict=True):
        for i, name in enumerate(names):
            pts = [(r["step"], s[key]) for r in rows
                   if (s := r["activations"].get(name)) and s.get(key) is not None]
            if pts:  # one colour per module across the three panels
                ax.plot(*zip(*pts, strict=True), marker=".", lw=1, label=name, color=f"C{i % 10}")
        ax.set_ylabel(label, fontsize=8)
    if len(names) <= 16:
        axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[0].set_title("Activation statistics per module (sampled steps)")
    axes[-1].set_xlabel("step")
    return _png(fig)


_CAPTIONS = {
    "grad": "Gradient norm on a log scale. A steady climb over many steps is exploding "
    "gradients; isolated red crosses are spikes (z-score against the EMA); orange dots are "
    "steps the clipper scaled down, dotted gray its threshold.",
    "loss": "Loss with spikes (red crosses), NaN/Inf steps (black) and rollbacks (purple).",
    "layers": "Per-layer gradient norm (log10), one row per parameter tensor in model order. "
    "Rows that are much darker near the input show vanishing gradients; a bright band that "
    "grows over time shows which layers explode.",
    "updates": "Update-to-weight ratio ||w_t - w_{t-1}|| / ||w_{t-1}|| (log10) on sampled steps; "
    "about -3 (1e-3) is the usual healthy value; far above means the learning rate is too high, "
    "far below too low.",
    "acts": "Mean, standard deviation and dead-unit fraction of each module's output. A std "
    "that shrinks layer after layer signals vanishing signal; a dead fraction near 1 marks "
    "dead ReLUs.",
}


def render_report(
    run_dir: str | Path, out: str | Path | None = None, run: int | None = None
) -> int:
    """Render the monitor log of ``run_dir`` as a self-contained HTML page.

    The page holds the diagnosis, the events, and plots embedded as base64 PNGs: gradient
    norm (log scale) with clip events, loss with spikes, per-layer gradient norms and update
    ratios as heat maps, and activation statistics. Corrupt log lines are skipped (one line on
    stderr says how many). A log that holds several runs (a monitor opened again on the same
    folder) gets the plots of one run (``run``, default the last) and a table of every run with
    its own diagnosis.

    Args:
        run_dir: the folder given to ``Monitor(log_dir=...)`` (or its ``monitor.jsonl``).
        out: the HTML file to write. Default: ``run_dir/report.html``.
        run: the run to plot; None: the last one.

    Returns:
        The exit status: 0 when the page was written; 1, with a one-line reason on stderr,
        when the log is missing, holds no step (empty, or every line corrupt), ``run`` is not
        in it, or matplotlib is not installed.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            runs = read_runs(run_dir)
        except FileNotFoundError as err:
            print(f"traintech report: no data: {err}", file=sys.stderr)
            return 1
    corrupt = [w for w in caught if issubclass(w.category, UserWarning)]
    if corrupt:
        print(f"traintech report: skipped {len(corrupt)} corrupt line(s), the first: "
              f"{corrupt[0].message}", file=sys.stderr)
    with_data = {k: v for k, v in runs.items() if v[1]}
    if not with_data:
        why = f"all {len(corrupt)} line(s) are corrupt" if corrupt else "it holds no logged step"
        print(f"traintech report: no data: the monitor log in {str(run_dir)!r} cannot be "
              f"reported, {why} (call monitor.step() after each optimizer.step())",
              file=sys.stderr)
        return 1
    if run is None:
        run = max(with_data)
    elif run not in runs:
        print(f"traintech report: --run {run} is not in {str(run_dir)!r}; its runs: "
              f"{', '.join(str(k) for k in sorted(with_data))}", file=sys.stderr)
        return 1
    meta, records = runs[run]
    if not records:
        print(f"traintech report: no data: run {run} of {str(run_dir)!r} logged no step",
              file=sys.stderr)
        return 1
    base = Path(run_dir)
    target = Path(out) if out is not None else (base if base.is_dir() else base.parent) / (
        "report.html"
    )
    try:
        images = [
            ("Gradient norm", _plot_grad_norm(records), _CAPTIONS["grad"]),
            ("Loss", _plot_loss(records), _CAPTIONS["loss"]),
            ("Per-layer gradient norms",
             _plot_heatmap(records, meta, "grad_norms", "Gradient norm per layer"),
             _CAPTIONS["layers"]),
            ("Update-to-weight ratios",
             _plot_heatmap(records, meta, "update_ratio", "Update / weight ratio per layer"),
             _CAPTIONS["updates"]),
            ("Activation statistics", _plot_activations(records), _CAPTIONS["acts"]),
        ]
    except ImportError as err:
        print(f"traintech report: {err}", file=sys.stderr)
        return 1
    diagnosis = format_findings(diagnose(records, meta))
    others = {
        k: format_findings(diagnose(r, m)) for k, (m, r) in with_data.items()
    } if len(with_data) > 1 else {}
    page = _html(meta, records, diagnosis, images, run, others)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    shown = f" (run {run} of {len(with_data)}; pick one with --run)" if others else ""
    print(f"traintech report: wrote {target}{shown}")
    return 0


def _html(meta: dict[str, Any], records: list[dict[str, Any]], diagnosis: str,
          images: list[tuple[str, str | None, str]], run: int = 1,
          runs: dict[int, str] | None = None) -> str:
    esc = html.escape
    steps = f"steps {records[0]['step']}-{records[-1]['step']}" if records else "no steps logged"
    events = [e for r in records for e in r.get("events", [])]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>traintech monitor report</title><style>",
        "body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}",
        "pre{background:#f6f6f6;padding:1em;white-space:pre-wrap}",
        "img{max-width:100%} table{border-collapse:collapse;font-size:13px}",
        "td,th{border:1px solid #ccc;padding:2px 6px} .cap{color:#555;font-size:14px}",
        "</style></head><body>",
        "<h1>Training-health report</h1>",
        f"<p>Model <b>{esc(str(meta.get('model', '?')))}</b>, {len(records)} logged steps "
        f"({esc(steps)}), {len(meta.get('params', {}))} parameter tensors.</p>",
        "<h2>Diagnosis</h2>",
        f"<pre id='diagnosis'>{esc(diagnosis)}</pre>",
    ]
    if runs:
        parts.append(f"<h2>Runs in this log ({len(runs)}; plots below: run {run})</h2>")
        parts.append("<table id='runs'><tr><th>run</th><th>diagnosis</th></tr>")
        for k, text in runs.items():
            parts.append(f"<tr><td>{k}</td><td><pre>{esc(text)}</pre></td></tr>")
        parts.append("</table>")
    for title, image, caption in images:
        if image is None:
            continue
        parts.append(f"<h2>{esc(title)}</h2><p class='cap'>{esc(caption)}</p>")
        parts.append(f"<img alt='{esc(title)}' src='data:image/png;base64,{image}'>")
    parts.append(f"<h2>Events ({len(events)})</h2>")
    if events:
        parts.append("<table><tr><th>step</th><th>kind</th><th>details</th></tr>")
        for e in events[:300]:
            details = {k: v for k, v in e.items() if k not in ("step", "kind")}
            parts.append(f"<tr><td>{e['step']}</td><td>{esc(e['kind'])}</td>"
                         f"<td>{esc(json.dumps(details))}</td></tr>")
        parts.append("</table>")
        if len(events) > 300:
            parts.append(f"<p>... and {len(events) - 300} more.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
