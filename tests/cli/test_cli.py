import subprocess
import sys

import pytest
import torch

import traintech
from traintech.cli import build_parser, main


def test_version_prints_both_versions(capsys):
    assert main(["version"]) == 0
    out = capsys.readouterr().out
    assert f"traintech {traintech.__version__}" in out
    assert torch.__version__ in out


@pytest.mark.parametrize("command", ["demo", "report", "version"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: traintech " + command in capsys.readouterr().out


def test_demo_options_are_parsed():
    args = build_parser().parse_args(
        ["demo", "--quick", "--out", "x", "--only", "clip,norm", "--seeds", "2", "--threads", "3"]
    )
    assert (args.quick, args.out, args.only, args.seeds, args.threads) == (
        True,
        "x",
        ["clip", "norm"],
        2,
        3,
    )


def test_demo_jobs_option():
    assert build_parser().parse_args(["demo"]).jobs is None
    assert build_parser().parse_args(["demo", "--jobs", "2", "--only", "transformer"]).jobs == 2


@pytest.mark.parametrize(
    "bad", [["--only", "clip,bogus"], ["--threads", "0"], ["--seeds", "x"], ["--jobs", "0"]]
)
def test_demo_rejects_bad_options(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", *bad])
    assert exc.value.code == 2
    assert bad[0] in capsys.readouterr().err


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: traintech" in capsys.readouterr().err


def test_python_dash_m_runs():
    done = subprocess.run(
        [sys.executable, "-m", "traintech", "version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("traintech ")


def test_import_traintech_is_light():
    code = (
        "import sys, traintech; "
        "heavy = ('matplotlib', 'sklearn', 'tqdm', 'tensorboard'); "
        "heavy = [m for m in heavy if m in sys.modules]; "
        "print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_families_are_reachable_from_the_package():
    for family in ("clip", "init", "norm", "dropout", "monitor", "demo"):
        assert getattr(traintech, family).__name__ == f"traintech.{family}"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        traintech.nope  # noqa: B018


def test_dash_dash_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"traintech {traintech.__version__}"
