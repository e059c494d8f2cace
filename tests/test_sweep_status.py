"""`diversefl sweep --status`: cell states, the defense x seed matrix and the time left."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from conftest import hold_lock, tiny_config

from diversefl.cli import main
from diversefl.config import ConfigError
from diversefl.experiments.sweep import expand, run_sweep
from diversefl.experiments.sweep_status import done_matrix, summary_lines, sweep_progress, time_left


def _cells(seeds=(0,)):
    raw = tiny_config(rounds=10, attack={"name": "none", "f": 1})
    raw["sweep"] = {"aggregators": ["mean", "median", "diversefl"], "seeds": list(seeds)}
    return expand(raw), raw


def _fake_started(run_dir: Path, rounds: list[int], checkpoint: bool = True) -> None:
    """What an interrupted run leaves: its marker, the metrics rows it wrote and (unless it
    stopped before its first one) a checkpoint."""
    run_dir.mkdir(parents=True)
    (run_dir / ".running").touch()
    lines = ["round,test_accuracy"] + [f"{r},0.5" for r in rounds]
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    if checkpoint:
        (run_dir / "checkpoint.pt").write_bytes(b"stand-in")  # only its existence is read


def test_states_matrix_and_time_left(tmp_path: Path):
    cells, _ = _cells(seeds=(0, 1))
    run_sweep(cells, tmp_path, progress=False, echo=lambda m: None, only=["median__*__seed0"])
    _fake_started(tmp_path / "mean__none__seed1", [5])  # 5 of 10 rounds
    progress = sweep_progress(cells, tmp_path)
    states = {p.cell.dirname: p.state for p in progress}
    assert states["median__none__seed0"] == "done"
    assert states["mean__none__seed1"] == "interrupted"  # nobody holds its lock
    assert sum(s == "todo" for s in states.values()) == 4

    aggs, seeds, counts = done_matrix(progress)
    assert aggs == ["mean", "median", "diversefl"] and seeds == [0, 1]
    assert counts[("median", 0)] == (1, 0, 1)
    assert counts[("mean", 1)] == (0, 1, 1)
    assert counts[("diversefl", 1)] == (0, 0, 1)

    # by hand: 4 untouched cells + half of the started one = 4.5 runs left, at the one
    # finished run's wall time each, spread over 3 jobs
    wall = json.loads((tmp_path / "median__none__seed0" / "summary.json").read_text())[
        "wall_seconds"
    ]
    left, seconds = time_left(progress, jobs=3)
    assert left == pytest.approx(4.5)
    assert seconds == pytest.approx(4.5 * wall / 3)
    lines = summary_lines(progress, jobs=3)
    assert lines[0] == "1 of 6 runs done, 0 running, 1 interrupted, 4 not started"
    assert any(ln.startswith("interrupted: mean__none__seed1 at round 5/10") for ln in lines)
    assert lines[-1].startswith("4.5 runs' worth left: ~") and "--jobs 3" in lines[-1]


@pytest.mark.slow
def test_nothing_finished_and_all_finished(tmp_path: Path):
    cells, _ = _cells()
    progress = sweep_progress(cells, tmp_path / "absent")
    assert time_left(progress) == (3.0, None)
    assert "no finished run yet" in summary_lines(progress)[-1]
    run_sweep(cells, tmp_path, progress=False, echo=lambda m: None)
    progress = sweep_progress(cells, tmp_path)
    assert time_left(progress) == (0.0, 0.0)
    assert summary_lines(progress)[-1] == "nothing left to run"


def test_finished_run_with_another_config_is_an_error(tmp_path: Path):
    cells, _ = _cells()
    run_sweep(cells[:1], tmp_path, progress=False, echo=lambda m: None)
    cfg_path = tmp_path / cells[0].dirname / "config.toml"
    text = cfg_path.read_text().replace("rounds = 10", "rounds = 11")
    assert tomllib.loads(text)["rounds"] == 11
    cfg_path.write_text(text)
    with pytest.raises(ConfigError, match="different config"):
        sweep_progress(cells, tmp_path)


def test_cli_status_prints_matrix_and_runs_nothing(tmp_path: Path, capsys):
    import tomli_w

    cells, raw = _cells()
    cfg = tmp_path / "grid.toml"
    cfg.write_text(tomli_w.dumps(raw))
    out = tmp_path / "runs"
    run_sweep(cells, out, progress=False, echo=lambda m: None, only=["mean__*"])
    before = sorted(p.name for p in out.iterdir())
    assert main(["sweep", str(cfg), "--out", str(out), "--status", "--jobs", "2"]) == 0
    text = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == before  # nothing ran
    assert "1 of 3 runs done, 0 running, 0 interrupted, 2 not started" in text
    assert "1/1" in text and "0/1" in text and "1/3" in text  # cells and the "all" row
    assert "--jobs 2" in text
    assert main(["sweep", str(cfg), "--out", str(out), "--status", "--only", "median*"]) == 0
    assert "0 of 1 runs done" in capsys.readouterr().out


def test_a_run_never_checkpointed_is_not_said_to_resume(tmp_path: Path):
    """A run stopped before its first checkpoint (a setup error in its first round, or killed
    early) starts again from round 0: --status says so and counts all of its rounds as left."""
    cells, _ = _cells()
    bare = tmp_path / cells[0].dirname  # what a cell that failed while being set up leaves
    bare.mkdir()
    (bare / ".running").touch()
    (bare / ".lock").touch()
    _fake_started(tmp_path / cells[1].dirname, [5], checkpoint=False)
    _fake_started(tmp_path / cells[2].dirname, [5])
    progress = sweep_progress(cells, tmp_path)
    assert [p.state for p in progress] == ["interrupted"] * 3
    lines = summary_lines(progress)
    restart = "(started but never checkpointed: the next sweep starts it from round 0)"
    assert f"interrupted: {cells[0].dirname} at round 0/10 {restart}" in lines
    assert f"interrupted: {cells[1].dirname} at round 5/10 {restart}" in lines
    assert (
        f"interrupted: {cells[2].dirname} at round 5/10 "
        "(the next sweep resumes it from its last checkpoint)"
    ) in lines
    assert time_left(progress)[0] == pytest.approx(2.5)


def test_a_locked_cell_is_running_and_named(tmp_path: Path):
    """A cell whose lock another process holds is "running", with that process named."""
    cells, _ = _cells()
    _fake_started(tmp_path / "median__none__seed0", [5])
    child = hold_lock(tmp_path / "median__none__seed0")
    try:
        p = {q.cell.dirname: q for q in sweep_progress(cells, tmp_path)}["median__none__seed0"]
        assert p.state == "running" and p.holder.startswith(f"pid {child.pid} on ")
        assert any(ln.startswith("running: median__none__seed0 at round 5/10 (pid ")
                   for ln in summary_lines([p]))  # fmt: skip
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    # its process ended: the kernel dropped the lock, the cell is interrupted
    p = {q.cell.dirname: q for q in sweep_progress(cells, tmp_path)}["median__none__seed0"]
    assert p.state == "interrupted"


def test_time_left_at_the_runs_in_progress(tmp_path: Path):
    """Two cells held by other sweep processes: the estimate is also given for 2 at once."""
    from diversefl.experiments.sweep_status import CellProgress

    cells, _ = _cells()
    done = CellProgress(cells[0], "done", 10, 600.0)
    busy = [CellProgress(c, "running", 5, 0.0, f"pid {i} on host") for i, c in enumerate(cells[1:])]
    lines = summary_lines([done, *busy], jobs=1)
    # by hand: two half-done cells = 1 run's worth at 600 s; 2 processes share it: 300 s
    assert lines[-2].startswith("1.0 runs' worth left: ~10 min with --jobs 1")
    assert lines[-1] == (
        "at the 2 runs in progress now (other sweep processes on this directory included): ~5 min"
    )
    assert not summary_lines([done, *busy], jobs=2)[-1].startswith("at the")


def test_time_left_at_each_defenses_own_pace():
    """Unfinished cells are timed by their own defense's finished runs; a defense without
    any by the mean of all finished runs."""
    from diversefl.experiments.sweep_status import CellProgress

    cells, _ = _cells(seeds=(0, 1, 2))
    by = {c.dirname: c for c in cells}
    progress = [
        CellProgress(by["mean__none__seed0"], "done", 10, 100.0),
        CellProgress(by["mean__none__seed1"], "done", 10, 140.0),
        CellProgress(by["median__none__seed0"], "done", 10, 300.0),
        CellProgress(by["mean__none__seed2"], "todo", 0, 0.0),
        CellProgress(by["median__none__seed1"], "interrupted", 5, 0.0),
        CellProgress(by["median__none__seed2"], "todo", 0, 0.0),
        CellProgress(by["diversefl__none__seed0"], "todo", 0, 0.0),
    ]
    # by hand: mean 1 x 120 s; median (0.5 + 1) x 300 s; diversefl 1 x (100+140+300)/3 = 180 s
    left, seconds = time_left(progress, jobs=2)
    assert left == pytest.approx(3.5)
    assert seconds == pytest.approx((120.0 + 450.0 + 180.0) / 2)
