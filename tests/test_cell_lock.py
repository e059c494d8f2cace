"""Per-run-directory locks: two sweep processes on one grid never run the same cell."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import hold_lock, tiny_config

from diversefl.cell_lock import LOCK_NAME, CellLock, holder
from diversefl.experiments.sweep import _run_cell, expand, run_sweep


def test_lock_is_exclusive_between_processes_and_dies_with_its_holder(tmp_path: Path):
    child = hold_lock(tmp_path / "cell")
    try:
        mine = CellLock(tmp_path / "cell")
        assert not mine.acquire()
        assert holder(tmp_path / "cell") == f"pid {child.pid} on {os.uname().nodename}"
    finally:
        child.send_signal(signal.SIGKILL)  # killed, not released
        child.wait(timeout=30)
    # the kernel dropped the flock with the process; the pid in the file is dead
    assert holder(tmp_path / "cell") is None
    with CellLock(tmp_path / "cell") as mine:
        assert mine.acquire()
        assert holder(tmp_path / "cell") == f"pid {os.getpid()} on {os.uname().nodename}"
    # released: the file stays, empty, and names nobody
    assert (tmp_path / "cell" / LOCK_NAME).read_text() == ""
    assert holder(tmp_path / "cell") is None


def _cells():
    raw = tiny_config(rounds=10, attack={"name": "none", "f": 1})
    raw["sweep"] = {"aggregators": ["mean", "median"]}
    return expand(raw)


def test_sweep_skips_a_cell_another_process_runs_and_picks_it_up_later(tmp_path: Path):
    cells = _cells()
    busy = tmp_path / "median__none__seed0"
    child = hold_lock(busy)
    try:
        messages: list[str] = []
        rows = run_sweep(cells, tmp_path, progress=False, echo=messages.append)
        assert [r["aggregator"] for r in rows] == ["mean"]
        assert any(
            m.startswith("[2/2] median__none__seed0: running in pid ") and m.endswith("skipped")
            for m in messages
        )
        assert not (busy / "summary.json").exists()  # not touched
        # the other process finishes the cell meanwhile (here: this one, with its lock)
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    done = _run_cell(cells[1], busy, None, False)
    assert done.summary is not None and done.elsewhere == ""
    # a later sweep finds both finished, and its sweep.csv lists both
    messages.clear()
    run_sweep(cells, tmp_path, progress=False, echo=messages.append)
    assert all("done already" in m for m in messages)
    with (tmp_path / "sweep.csv").open() as fh:
        assert [r["aggregator"] for r in csv.DictReader(fh)] == ["mean", "median"]


def test_a_cell_finished_elsewhere_is_not_run_again(tmp_path: Path):
    cells = _cells()
    run_dir = tmp_path / cells[0].dirname
    first = _run_cell(cells[0], run_dir, None, False)
    stamp = (run_dir / "metrics.csv").stat().st_mtime_ns
    again = _run_cell(cells[0], run_dir, None, False)  # as a second process reaching it late
    assert again.summary == first.summary and again.elsewhere == "finished by another process"
    assert (run_dir / "metrics.csv").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_two_sweep_processes_on_one_grid_split_it(tmp_path: Path):
    """Two `diversefl sweep` processes started together on one directory: every cell is run
    by exactly one of them, and each run's numbers equal a serial run's."""
    import tomli_w

    raw = tiny_config(rounds=20, attack={"name": "sign_flip", "f": 1})
    raw["sweep"] = {"aggregators": ["mean", "median", "diversefl", "krum"], "seeds": [0, 1]}
    cfg = tmp_path / "grid.toml"
    cfg.write_text(tomli_w.dumps(raw))
    out = tmp_path / "shared"
    cmd = [sys.executable, "-c", "import sys; from diversefl.cli import main; sys.exit(main())"]
    args = ["sweep", str(cfg), "--out", str(out), "--quiet"]
    procs = [
        subprocess.Popen(cmd + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    cells = expand(raw)
    ran = {c.dirname: sum(f"] {c.dirname}: acc " in log for log in logs) for c in cells}
    assert set(ran.values()) == {1}, (ran, logs)  # each cell run by exactly one process

    def metrics(d: Path) -> list[dict[str, str]]:
        with (d / "metrics.csv").open() as fh:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]

    serial = tmp_path / "serial"
    run_sweep(cells, serial, progress=False, echo=lambda m: None)
    for c in cells:
        assert metrics(out / c.dirname) == metrics(serial / c.dirname), c.dirname


def test_a_lock_file_removed_under_a_waiter_does_not_make_two_holders(tmp_path, monkeypatch):
    """B opens .lock just before A (a plain run) deletes it and lets go, and C locks the new
    file at the path: B's flock on the deleted file succeeds, but B must see that its file is
    gone and count as not holding the lock."""
    from diversefl import cell_lock

    a = cell_lock.CellLock(tmp_path)
    assert a.acquire()
    stale = open(tmp_path / ".lock", "a+")  # noqa: SIM115 - B's open, before the delete
    a.release_and_remove()
    assert not (tmp_path / ".lock").exists()
    c = cell_lock.CellLock(tmp_path)
    assert c.acquire()
    opened = iter([stale])
    real_open = open
    monkeypatch.setattr(cell_lock, "open", lambda *a, **k: next(opened, None) or real_open(*a, **k),
                        raising=False)  # fmt: skip
    b = cell_lock.CellLock(tmp_path)
    assert not b.acquire()  # C holds the file at the path
    c.release()
    assert b.acquire()  # and once C lets go, B takes that file
    b.release()


def test_a_lock_planted_as_a_link_is_not_followed(tmp_path):
    """A sweep empties its lock file on release: a link planted at .lock must not make it cut
    the file the link points to."""
    import pytest

    from diversefl.cell_lock import LOCK_NAME, CellLock

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).symlink_to(victim)
    with pytest.raises(OSError):
        CellLock(run).acquire()
    assert victim.read_text() == "keep me\n"
