import base64
import html
import re
import shutil
import subprocess
import sys

import pytest
import torch
from _monitor_models import mlp, regression_data, train

from traintech.cli import main
from traintech.monitor import Monitor, read_log, render_report


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real short run with activations, update ratios, a loss spike and clipping."""
    path = tmp_path_factory.mktemp("run")
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x, y = regression_data(1024, 6, gen)
    model = mlp((6, 32, 32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = Monitor(model, opt, path, activation_every=10, update_every=5)
    train(model, opt, mon, x, y, 60, loss_scale={45: 40.0})
    summary = mon.summary()
    mon.close()
    return path, summary


def images(page):
    return re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)


def test_report_has_the_plots_and_the_diagnosis(run_dir, tmp_path):
    path, summary = run_dir
    out = tmp_path / "r.html"
    assert render_report(str(path), out=str(out)) == 0
    page = out.read_text()
    pngs = images(page)
    assert len(pngs) == 5  # grad norm, loss, layer heat map, update heat map, activations
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert html.escape(summary) in page and "loss spike" in summary
    assert "60 logged steps" in page and "<script" not in page


def test_default_output_lies_in_the_run_dir_and_cli_works(run_dir, capsys):
    path, _ = run_dir
    assert main(["report", str(path)]) == 0
    assert (path / "report.html").is_file()
    assert "report.html" in capsys.readouterr().out


def test_corrupt_and_truncated_lines_are_skipped(run_dir, tmp_path, capsys):
    path, _ = run_dir
    lines = (path / "monitor.jsonl").read_text().splitlines()
    broken = tmp_path / "broken"
    broken.mkdir()
    lines[5] = lines[5][: len(lines[5]) // 2]  # truncated in the middle
    lines.insert(9, "not json at all")
    (broken / "monitor.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 60, "lo')
    with pytest.warns(UserWarning) as caught:
        meta, records = read_log(broken)
    messages = [str(w.message) for w in caught]
    assert [m.split("monitor.jsonl:")[1].split(":")[0] for m in messages] == ["6", "10", "63"]
    assert all("skipped a corrupt or truncated line" in m for m in messages)
    assert len(records) == 59 and meta["params"]
    capsys.readouterr()
    assert render_report(broken) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipped 3 corrupt line(s)" in err[0]  # one line, not three
    assert len(images((broken / "report.html").read_text())) == 5


def test_missing_log_fails_cleanly(tmp_path, capsys):
    assert render_report(tmp_path / "nothing") == 1
    assert "no monitor log" in capsys.readouterr().err


def test_missing_matplotlib_says_how_to_install(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert render_report(run_dir[0], out=tmp_path / "x.html") == 1
    assert "pip install 'traintech[monitor]'" in capsys.readouterr().err


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if found := shutil.which(name):
            return found
    return None


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary found")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    out = tmp_path / "report.html"
    assert render_report(run_dir[0], out=out) == 0
    shot = tmp_path / "shot.png"
    subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1000,2400", f"--screenshot={shot}", out.as_uri()],
        capture_output=True, timeout=120, check=False,
    )
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (2400, 1000)
    # The page is not blank: the plots put many distinct colours on screen.
    colours = {tuple(p) for p in (pixels[::7, ::7, :3] * 255).astype(int).reshape(-1, 3).tolist()}
    assert len(colours) > 50


def test_a_resumed_run_appends_to_the_same_log(tmp_path):
    gen = torch.Generator().manual_seed(1)
    x, y = regression_data(256, 6, gen)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    first = Monitor(model, opt, tmp_path)
    train(model, opt, first, x, y, 5)
    state = first.state_dict()
    first.close()
    second = Monitor(model, opt, tmp_path)
    second.load_state_dict(state)
    train(model, opt, second, x, y, 5, start=5)
    second.close()
    meta, records = read_log(tmp_path)
    assert [r["step"] for r in records] == list(range(10))
    assert records == list(second.history)
    csv_rows = (tmp_path / "monitor.csv").read_text().splitlines()
    assert len(csv_rows) == 11 and csv_rows[0].startswith("step,")  # one header
