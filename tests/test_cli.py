"""The `diversefl` command end to end (in-process through main(), and one real subprocess)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
import torch
from conftest import tiny_config

import diversefl
from diversefl.cli import main


def test_demo_runs_mean_and_diversefl(tmp_path: Path, capsys):
    assert main(["run", "--rounds", "20", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "mean" in out and "diversefl" in out
    for agg in ("mean", "diversefl"):
        summary = json.loads((tmp_path / "demo" / agg / "summary.json").read_text())
        assert summary["rounds"] == 20 and summary["attack"] == "sign_flip"
    dfl = json.loads((tmp_path / "demo" / "diversefl" / "summary.json").read_text())
    assert dfl["mean_tpr"] == 1.0  # sign-flipped updates fail C1 every round


def test_demo_banner_follows_overrides(tmp_path: Path, capsys):
    """`--set` changes what the demo trains, and the banner and table say so."""
    args = ["run", "--rounds", "2", "--out", str(tmp_path / "demo"), "--quiet"]
    assert main([*args, "--set", "clients.n=12", "--set", "attack.f=3"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # undo the console's line wrapping
    assert "12 clients on the bundled digits data" in out
    assert "3 of them Byzantine and flipping the sign" in out
    assert "sign_flip, n = 12, f = 3" in out
    assert json.loads((tmp_path / "demo" / "mean" / "summary.json").read_text())["f"] == 3


def test_failed_start_leaves_no_empty_run_directory(tmp_path: Path, capsys):
    """A run that fails before writing anything (here: a missing data directory) removes the
    directories it created, so the next attempt needs no --overwrite; existing ones stay."""
    out = tmp_path / "new" / "deeper" / "run"
    argv = ["--set", "data.dataset=mnist", "--data-dir", str(tmp_path / "nowhere"), "--quiet"]
    assert main(["run", "--out", str(out), *argv]) != 0
    assert "nowhere" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert main(["run", "--out", str(kept / "demo"), *argv]) != 0
    assert kept.is_dir() and not any(kept.iterdir())


def test_bad_demo_override_writes_nothing(tmp_path: Path, capsys):
    assert main(["run", "--out", str(tmp_path / "demo"), "--set", "clients.n=abc"]) != 0
    assert "clients.n" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_run_writes_run_directory(tmp_path: Path):
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(tomli_w.dumps(tiny_config(rounds=12)))
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                str(cfg_path),
                "--out",
                str(out),
                "--quiet",
                "--set",
                "aggregator.name=oracle",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint.pt", "config.toml", "decisions.csv", "metrics.csv", "summary.json"]
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [5, 10, 12]
    assert {"round", "test_accuracy", "test_loss", "n_accepted", "seconds"} <= set(rows[0])
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "final_test_accuracy",
        "best_test_accuracy",
        "rounds",
        "wall_seconds",
        "seed",
        "versions",
    ):
        assert key in summary
    assert summary["seed"] == 3 and summary["aggregator"] == "oracle"
    assert set(summary["versions"]) == {"python", "torch", "diversefl"}
    machine = summary["machine"]  # float rounding differs between CPUs: say which one
    assert machine["cpu"] and machine["cpu"] != "unknown" and machine["cores"] >= 1
    assert machine["torch_threads"] >= 1 and "gpu" not in machine
    assert 'name = "oracle"' in (out / "config.toml").read_text()


def test_bad_config_is_a_clear_error_before_training(tmp_path: Path, capsys):
    out = tmp_path / "never"
    code = main(["run", "--out", str(out), "--set", "optim.lr=-1", "--quiet"])
    assert code == 2
    assert "optim.lr" in capsys.readouterr().err
    assert not out.exists()  # nothing written, not even an empty directory


@pytest.mark.slow  # 2 s or more on a 2-core CPU
def test_console_script_help():
    res = subprocess.run(
        [sys.executable, "-m", "diversefl.cli", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0 and "sweep" in res.stdout and "run" in res.stdout


def test_version_names_diversefl_and_torch(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"diversefl {diversefl.__version__} ")
    assert f"torch {torch.__version__}" in out


def test_resume_without_out_is_a_clear_error(capsys):
    """`run --resume` with neither a config nor `--out`: status 2 and what is missing."""
    assert main(["run", "--resume"]) == 2
    assert "--resume needs --out RUN_DIR" in capsys.readouterr().err
