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


@pytest.mark.slow
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


def _interrupted_run(tmp_path: Path, monkeypatch) -> tuple[dict, Path, Path]:
    """A reference run and the same run killed while it saved its last checkpoint (round 30):
    its CSVs already hold the rows written after the round-20 checkpoint it goes on from, as a
    kill after a flush but before the next checkpoint leaves them."""
    from diversefl import results

    cfg = tiny_config(rounds=30, eval={"every": 5, "checkpoint_every": 10})
    ref = tmp_path / "ref"
    diversefl.run(cfg, out=ref)
    mid = tmp_path / "mid"
    real, saves = os.replace, []

    def replace(src, dst, *a, **k):
        if Path(dst).name == "checkpoint.pt":
            saves.append(dst)
            if len(saves) == 3:
                raise KeyboardInterrupt  # killed in the middle of the round-30 checkpoint
        return real(src, dst, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        with pytest.raises(KeyboardInterrupt):
            diversefl.run(cfg, out=mid)
    assert results.load_checkpoint(mid / "checkpoint.pt")["round"] == 20
    assert [r["round"] for r in _metrics(mid / "metrics.csv")][-1] == "30"
    return cfg, ref, mid


def _killed(*a, **k):
    raise KeyboardInterrupt


def test_a_kill_during_the_resume_loses_no_row(tmp_path: Path, monkeypatch):
    """Resume cuts each CSV back to the checkpoint in one ``ftruncate`` and changes nothing
    else before its next checkpoint: killed at the cut, or at that checkpoint's rename, the
    files are still a run that the next --resume completes to the reference."""
    cfg, ref, mid = _interrupted_run(tmp_path, monkeypatch)
    before = {name: (mid / name).read_bytes() for name in ("decisions.csv", "config.toml")}
    for call in ("ftruncate", "replace"):
        with monkeypatch.context() as m:
            m.setattr(os, call, _killed)
            with pytest.raises(KeyboardInterrupt):
                diversefl.run(cfg, out=mid, resume=True)
        # the rows after the checkpoint are cut and written again, the same
        assert {name: (mid / name).read_bytes() for name in before} == before
        assert not [p for p in mid.iterdir() if p.name.endswith(".tmp")]
    diversefl.run(cfg, out=mid, resume=True)
    assert _metrics(mid / "metrics.csv") == _metrics(ref / "metrics.csv")
    assert (mid / "decisions.csv").read_text() == (ref / "decisions.csv").read_text()


def test_a_row_cut_short_by_a_kill_is_dropped_on_resume(tmp_path: Path, monkeypatch):
    """A kill in the middle of an append can leave '42' of a round-425 row: it parses as an
    early round, but it lies after what the checkpoint recorded, so resume drops it."""
    cfg, ref, mid = _interrupted_run(tmp_path, monkeypatch)
    for name in ("metrics.csv", "decisions.csv"):
        with (mid / name).open("a") as fh:
            fh.write("1")  # the first digit of a later round's row
    diversefl.run(cfg, out=mid, resume=True)
    assert _metrics(mid / "metrics.csv") == _metrics(ref / "metrics.csv")
    assert (mid / "decisions.csv").read_text() == (ref / "decisions.csv").read_text()


def test_resume_edge_cases_name_the_problem_and_lose_nothing(tmp_path: Path):
    cfg = tiny_config(rounds=20, eval={"every": 5, "checkpoint_every": 10})
    out = tmp_path / "run"
    first = diversefl.run(cfg, out=out)
    # a finished run without its checkpoint (the committed leaderboard runs): returned as is
    (out / "checkpoint.pt").unlink()
    saved = {p.name: p.read_bytes() for p in out.iterdir()}
    again = diversefl.run(cfg, out=out, resume=True)
    assert again.summary == first.summary
    assert {p.name: p.read_bytes() for p in out.iterdir()} == saved
    # a damaged checkpoint or summary: an error naming the file
    diversefl.run(cfg, out=out, overwrite=True)
    (out / "summary.json").unlink()
    (out / "checkpoint.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(RunDirError, match=r"checkpoint.pt: not a readable checkpoint"):
        diversefl.run(cfg, out=out, resume=True)
    (out / "summary.json").write_text("{not json")
    (out / "checkpoint.pt").unlink()
    with pytest.raises(RunDirError, match=r"summary.json: not a readable run summary"):
        diversefl.run(cfg, out=out, resume=True)
    # killed before its first checkpoint: nothing was saved, so --resume starts it again
    fresh = tmp_path / "early"
    fresh.mkdir()
    (fresh / "metrics.csv").write_text("round,test_accuracy\n")
    assert diversefl.run(cfg, out=fresh, resume=True).summary["rounds"] == 20
    # --out naming a file
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file, not a directory"):
        diversefl.run(cfg, out=tmp_path / "file")


def test_run_files_get_the_usual_permissions(tmp_path: Path):
    """Atomically written files are not left private (0600) like their temp files: a sweep
    shared by several machines' users can read them."""
    diversefl.run(tiny_config(rounds=5), out=tmp_path / "run")
    mask = os.umask(0)
    os.umask(mask)
    for name in ("config.toml", "summary.json", "checkpoint.pt", "metrics.csv"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
