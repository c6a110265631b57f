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
from traintech.monitor._writers import JSONL_NAME

_INSTALL = "pip install 'traintech[monitor]'"


def read_log(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read a monitor JSONL log: the merged ``meta`` lines and the step records, in order.

    A line that is not valid JSON (e.g. truncated by a crash) is skipped with a
    ``UserWarning`` naming the file and line; the rest is read.

    Args:
        path: the ``monitor.jsonl`` file, or the folder holding it.

    Returns:
        ``(meta, records)``.

    Raises:
        FileNotFoundError: when there is no log at ``path``.
    """
    file = Path(path)
    if file.is_dir():
        file = file / JSONL_NAME
    if not file.is_file():
        raise FileNotFoundError(f"no monitor log at {str(file)!r} (expected {JSONL_NAME})")
    meta: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
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
            elif "meta" in obj:
                for key, value in obj["meta"].items():
                    if isinstance(value, dict):
                        meta.setdefault(key, {}).update(value)
                    else:
                        meta[key] = value
            elif isinstance(obj.get("step"), int):
                records.append(obj)
    return meta, records


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


def render_report(run_dir: str | Path, out: str | Path | None = None) -> int:
    """Render the monitor log of ``run_dir`` as a self-contained HTML page.

    The page holds the diagnosis, the events, and plots embedded as base64 PNGs: gradient
    norm (log scale) with clip events, loss with spikes, per-layer gradient norms and update
    ratios as heat maps, and activation statistics. Corrupt log lines are skipped with a
    warning.

    Args:
        run_dir: the folder given to ``Monitor(log_dir=...)`` (or its ``monitor.jsonl``).
        out: the HTML file to write. Default: ``run_dir/report.html``.

    Returns:
        The exit status: 0 when the page was written, 1 when the log is missing or
        matplotlib is not installed (the reason is printed to stderr).
    """
    try:
        meta, records = read_log(run_dir)
    except FileNotFoundError as err:
        print(f"traintech report: {err}", file=sys.stderr)
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
    page = _html(meta, records, diagnosis, images)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    print(f"traintech report: wrote {target}")
    return 0


def _html(meta: dict[str, Any], records: list[dict[str, Any]], diagnosis: str,
          images: list[tuple[str, str | None, str]]) -> str:
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
