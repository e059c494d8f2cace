"""Kill a real run with SIGKILL, resume it, and get the metrics of an uninterrupted run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
from conftest import tiny_config

import diversefl
from diversefl.results import RunDirError


def _metrics(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "diversefl.cli", *args]


def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path):
    cfg = tiny_config(
        rounds=300,
        model={"name": "mlp"},
        # a rate that does not diverge: diverging weights hit slow denormal arithmetic
        optim={"lr": 0.1, "schedule": "constant", "weight_decay": 0.0},
        attack={"name": "sign_flip", "f": 1},
        aggregator={"name": "diversefl"},
        eval={"every": 5, "checkpoint_every": 10},
    )
    cfg_path = tmp_path / "cfg.toml"
    cfg_path.write_text(tomli_w.dumps(cfg))
    ref = diversefl.run(cfg, out=tmp_path / "ref")

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli("run", str(cfg_path), "--out", str(out), "--quiet"))
    deadline = time.time() + 120
    # wait until at least one checkpoint exists, then kill at an arbitrary later moment
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "summary.json").exists()

    # an existing run directory is never reused silently
    again = subprocess.run(
        _cli("run", str(cfg_path), "--out", str(out), "--quiet"), capture_output=True, text=True
    )
    assert again.returncode != 0 and "--resume" in again.stderr  # errors go to stderr

    done = subprocess.run(
        _cli("run", "--out", str(out), "--resume", "--quiet"), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert _metrics(out / "metrics.csv") == _metrics(tmp_path / "ref" / "metrics.csv")
    with (out / "decisions.csv").open() as a, (tmp_path / "ref" / "decisions.csv").open() as b:
        assert a.read() == b.read()
    assert len(ref.metrics) == 60


def test_resume_in_process_and_overwrite_rules(tmp_path: Path):
    cfg = tiny_config(rounds=40)
    out = tmp_path / "run"
    diversefl.run({**cfg, "rounds": 40}, out=out)
    with pytest.raises(RunDirError):
        diversefl.run(cfg, out=out)
    r = diversefl.run(cfg, out=out, overwrite=True)
    assert r.summary["rounds"] == 40
    with pytest.raises(RunDirError):
        diversefl.run(cfg, out=out, overwrite=True, resume=True)


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch):
    from diversefl import results

    path = tmp_path / "checkpoint.pt"
    results.save_checkpoint(path, {"round": 1})

    def boom(*a, **k):
        raise KeyboardInterrupt  # a kill in the middle of the write

    monkeypatch.setattr(results.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        results.save_checkpoint(path, {"round": 2})
    assert results.load_checkpoint(path)["round"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert os.path.getsize(path) > 0


def test_resume_between_metric_rows_keeps_the_detection_window(tmp_path: Path, monkeypatch):
    """Checkpoints that fall between two metric rows (checkpoint_every = 50, every = 20): the
    row after a resume still pools n_accepted / tpr / fpr over all rounds since the previous
    row, as in an uninterrupted run (the counts since that row travel with the checkpoint)."""
    from diversefl.engine.simulator import Simulation

    cfg = tiny_config(
        rounds=60,
        clients={"n": 9},
        attack={"name": "label_flip", "f": 2, "byzantine": "per_round"},
        aggregator={"name": "diversefl"},
        eval={"every": 20, "checkpoint_every": 50},
    )
    diversefl.run(cfg, out=tmp_path / "whole")
    step = Simulation.step

    def crash_at_55(self, r):
        if r == 55:
            raise KeyboardInterrupt  # killed between the checkpoint (50) and the row (60)
        return step(self, r)

    monkeypatch.setattr(Simulation, "step", crash_at_55)
    with pytest.raises(KeyboardInterrupt):
        diversefl.run(cfg, out=tmp_path / "killed")
    monkeypatch.setattr(Simulation, "step", step)
    diversefl.run(cfg, out=tmp_path / "killed", resume=True)
    whole = _metrics(tmp_path / "whole" / "metrics.csv")
    assert [r["round"] for r in whole] == ["20", "40", "60"]
    assert _metrics(tmp_path / "killed" / "metrics.csv") == whole
