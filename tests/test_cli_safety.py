"""The `diversefl` command on misuse: a run directory in use, unwritable paths, bracketed
values, a changed config on --resume, Ctrl-C, logs that are not a terminal, deploy-local
input errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import tomli_w
from conftest import hold_lock, tiny_config

from diversefl.cli import main
from diversefl.engine.runner import _ProgressBar


def _config(tmp_path: Path, **sections) -> str:
    path = tmp_path / "cfg.toml"
    path.write_text(tomli_w.dumps(tiny_config(**sections)))
    return str(path)


def _err(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())  # undo the console's line wrapping


def test_a_run_in_progress_is_not_overwritten_or_resumed_twice(tmp_path: Path, capsys):
    """While another process holds the run directory, --overwrite and --resume are refused,
    naming the holder, and the run's files are untouched."""
    cfg = _config(tmp_path, rounds=10)
    out = tmp_path / "run"
    assert main(["run", cfg, "--out", str(out), "--quiet"]) == 0
    saved = {p.name: p.read_bytes() for p in out.iterdir()}
    assert ".lock" not in saved  # a plain run leaves no lock file behind
    child = hold_lock(out)
    try:
        for extra in (["--overwrite"], ["--resume"]):
            assert main(["run", cfg, "--out", str(out), "--quiet", *extra]) == 2
            assert "is in use by pid" in _err(capsys)
        assert main(["run", "--out", str(out), "--resume", "--quiet"]) == 2
        assert "is in use by pid" in _err(capsys)
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"} == saved
    assert main(["run", cfg, "--out", str(out), "--quiet", "--overwrite"]) == 0  # free again


def test_resume_names_the_setting_that_changed(tmp_path: Path, capsys):
    cfg = _config(tmp_path, rounds=6)
    out = tmp_path / "run"
    assert main(["run", cfg, "--out", str(out), "--quiet"]) == 0
    assert main(["run", "--out", str(out), "--resume", "--seed", "4", "--quiet"]) == 2
    err = _err(capsys)
    assert "seed: saved 0, now 4" in err and "only `rounds` may grow" in err
    assert main(["run", "--out", str(out), "--resume", "--rounds", "4", "--quiet"]) == 2
    assert "rounds: saved 6, now 4" in _err(capsys)  # a run is not shortened
    (out / "checkpoint.pt").unlink()
    assert main(["run", "--out", str(out), "--resume", "--rounds", "9", "--quiet"]) == 2
    assert "rounds: saved 6, now 9" in _err(capsys)  # nothing to go on from


def _rows(path: Path, drop: str = "seconds") -> list[dict[str, str]]:
    with path.open() as fh:
        return [{k: v for k, v in r.items() if k != drop} for r in csv.DictReader(fh)]


@pytest.mark.parametrize("first", [6, 5])
def test_a_finished_run_is_extended_with_more_rounds(tmp_path: Path, first: int):
    """`--resume --rounds 10` on a finished run goes on from its last checkpoint to round 10:
    the same model, decisions and metric rows as a run started with 10 rounds (plus the row
    the shorter run wrote at its last round when that round is off the eval grid)."""
    cfg = _config(
        tmp_path,
        rounds=first,
        attack={"name": "sign_flip", "f": 1},
        aggregator={"name": "diversefl"},
        eval={"every": 2, "checkpoint_every": 2},
    )
    longer, fresh = tmp_path / "longer", tmp_path / "fresh"
    assert main(["run", cfg, "--out", str(longer), "--quiet"]) == 0
    assert main(["run", "--out", str(longer), "--resume", "--rounds", "10", "--quiet"]) == 0
    assert main(["run", cfg, "--rounds", "10", "--out", str(fresh), "--quiet"]) == 0
    assert _rows(longer / "decisions.csv") == _rows(fresh / "decisions.csv")
    got, want = _rows(longer / "metrics.csv"), _rows(fresh / "metrics.csv")
    if first % 2:  # round 5 was the shorter run's last: evaluated then, and its window ends
        assert [r["round"] for r in got] == ["2", "4", "5", "6", "8", "10"]
        got = [r for r in got if r["round"] not in ("5", "6")]
        want = [r for r in want if r["round"] != "6"]
    assert got == want
    a = json.loads((longer / "summary.json").read_text())
    b = json.loads((fresh / "summary.json").read_text())
    assert a["rounds"] == 10 and a["final_test_accuracy"] == b["final_test_accuracy"]
    assert "rounds = 10" in (longer / "config.toml").read_text()


def test_resume_without_out_is_refused(tmp_path: Path, capsys, monkeypatch):
    """The default --out is a new timestamped folder: --resume there would silently start a
    new run."""
    monkeypatch.chdir(tmp_path)
    assert main(["run", _config(tmp_path), "--resume", "--quiet"]) == 2
    assert "--resume needs --out RUN_DIR" in _err(capsys)
    assert not Path("runs").exists() or not any(Path("runs").glob("cfg-*"))


def test_error_text_is_printed_as_written(tmp_path: Path, capsys):
    """Brackets in a bad value are not read as console markup (a closing tag used to crash)."""
    for value in ("[/x]", "[red]x"):
        assert main(["run", _config(tmp_path), "--set", f"aggregator.name={value}"]) == 2
        assert f"unknown aggregator '{value}'" in _err(capsys)


def test_an_unwritable_out_is_a_clear_error(tmp_path: Path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["run", _config(tmp_path), "--out", str(afile / "run"), "--quiet"]) == 2
    err = _err(capsys)
    assert err.startswith("error:") and str(afile / "run") in err and "Traceback" not in err
    assert main(["run", _config(tmp_path), "--out", str(afile), "--quiet"]) == 2
    assert f"--out {afile} is a file" in _err(capsys)


def test_the_demo_refuses_a_different_aggregator(tmp_path: Path, capsys):
    """Its rows are labelled mean and diversefl: --set aggregator.name would train both as
    something else under those labels."""
    out = tmp_path / "demo"
    assert main(["run", "--set", "aggregator.name=median", "--out", str(out), "--quiet"]) == 2
    assert "--set aggregator.name=median: the demo trains" in _err(capsys)
    assert not out.exists()


def test_ctrl_c_says_how_to_resume(tmp_path: Path, capsys, monkeypatch):
    import diversefl.api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(diversefl.api, "run", interrupted)
    assert main(["run", _config(tmp_path), "--out", str(tmp_path / "r"), "--quiet"]) == 130
    err = _err(capsys)
    # interrupted before anything was written: nothing to --resume (tests/test_friction.py
    # checks the hint that names the folder of a run with a checkpoint)
    assert "interrupted" in err and "run the same command again" in err
    assert "Traceback" not in err


def test_progress_is_plain_lines_when_output_is_not_a_terminal(tmp_path: Path, capsys, monkeypatch):
    """A log file gets a line now and then (here: every round) and at the end, with round,
    accuracy and speed; no bar that would only show when the run ends."""
    monkeypatch.setattr(_ProgressBar, "PLAIN_EVERY", 0.0)
    cfg = _config(tmp_path, rounds=4, eval={"every": 2})
    assert main(["run", cfg, "--out", str(tmp_path / "r")]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ": round " in ln]
    assert [ln.split(": round ")[1].split(",")[0] for ln in lines] == ["1/4", "2/4", "3/4", "4/4"]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert f"acc {summary['final_test_accuracy']:.4f}" in lines[-1]
    assert "acc -" in lines[0]  # round 1 is not evaluated (every 2)


def test_deploy_local_input_errors_are_errors_not_tracebacks(tmp_path: Path, capsys):
    pytest.importorskip("flwr")
    assert main(["deploy-local", str(tmp_path / "nope.toml"), "--nodes", "3"]) == 2
    assert "config file not found" in _err(capsys)
    out = tmp_path / "fl"
    args = ["deploy-local", "", "--nodes", "8", "--byzantine", "1=signflip", "--out", str(out)]
    assert main(args) == 2  # an input error, refused before any process starts
    err = _err(capsys)
    assert (
        "byzantine node 1: unknown attack 'signflip' (did you mean 'sign_flip'?); allowed:" in err
    )
    assert not out.exists()


def test_small_input_mistakes_get_plain_answers(tmp_path: Path, capsys):
    """A folder given as the config, an unknown --bars metric (the columns are listed), and
    the library's own warnings as one `warning:` line."""
    assert main(["run", str(tmp_path)]) == 2
    assert f"{tmp_path} is a directory, not a TOML config file" in _err(capsys)
    rows = "aggregator,attack,seed,final_test_accuracy,wall_seconds\nmean,none,0,0.9,12.0\n"
    (tmp_path / "sweep.csv").write_text(rows)
    assert main(["plot", str(tmp_path), "--bars", "foo", "--out", str(tmp_path / "b.png")]) == 2
    assert "numeric columns: final_test_accuracy, wall_seconds" in _err(capsys)
    # a sample larger than a shard: capped, with a one-line warning naming the key
    cfg = _config(tmp_path, rounds=2, clients={"n": 6, "batch": 0.5, "sample": 10_000})
    assert main(["run", cfg, "--out", str(tmp_path / "r"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: clients.sample=10000 is larger than the shards" in " ".join(err.split())
    assert "UserWarning" not in err and "Simulation(" not in err


def test_a_failed_extension_keeps_the_finished_run(tmp_path: Path, capsys):
    """An extension that fails before it goes on (here: a damaged checkpoint) leaves the
    finished run's summary.json as it was; a sweep's cell is not extended in place."""
    cfg = _config(tmp_path, rounds=4, eval={"every": 2, "checkpoint_every": 2})
    out = tmp_path / "run"
    assert main(["run", cfg, "--out", str(out), "--quiet"]) == 0
    summary = (out / "summary.json").read_bytes()
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["run", "--out", str(out), "--resume", "--rounds", "8", "--quiet"]) == 2
    assert "checkpoint" in _err(capsys)
    assert (out / "summary.json").read_bytes() == summary
    (tmp_path / "sweep.csv").write_text("aggregator,attack,seed\n")  # out is now a sweep cell
    assert main(["run", cfg, "--out", str(tmp_path / "cell"), "--quiet"]) == 0
    assert main(["run", "--out", str(tmp_path / "cell"), "--resume", "--rounds", "8"]) == 2
    assert "is a cell of the sweep in" in _err(capsys)


def test_diversefl_traceback_shows_the_whole_error(tmp_path: Path, monkeypatch):
    """For a bug report: DIVERSEFL_TRACEBACK=1 lets the exception through (with its stack)
    instead of the one-line error."""
    from diversefl.config import ConfigError

    monkeypatch.setenv("DIVERSEFL_TRACEBACK", "1")
    with pytest.raises(ConfigError, match="unknown aggregator 'nope'"):
        main(["run", _config(tmp_path), "--set", "aggregator.name=nope"])
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(NotADirectoryError):
        main(["run", _config(tmp_path), "--out", str(afile / "run"), "--quiet"])
    monkeypatch.setenv("DIVERSEFL_TRACEBACK", "0")  # off, as unset
    assert main(["run", _config(tmp_path), "--set", "aggregator.name=nope"]) == 2
