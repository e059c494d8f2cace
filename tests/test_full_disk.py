"""A disk that fills up mid-run: the CLI says so in one line naming the file, the files
written before stay intact (no half checkpoint, no stray temp file), and --resume on a
freed disk gives the numbers of a run that never stopped."""

from __future__ import annotations

import csv
import errno
import os
import pathlib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from conftest import tiny_config

import diversefl
from diversefl.cli import main

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="the simulated disk finds files via /proc"
)


class _Disk:
    """Every file written under ``root`` (through ``os.fdopen`` or ``Path.open``) shares
    ``budget`` bytes; the write that does not fit writes what fits and fails as a full disk
    does: ``OSError(ENOSPC)`` without a file name."""

    def __init__(self, root: Path, budget: float) -> None:
        self.root, self.left, self.written = root, budget, 0

    def wrap(self, fh: Any) -> Any:
        name = getattr(fh, "name", None)
        if isinstance(name, int):  # os.fdopen: find the file from its descriptor
            name = os.readlink(f"/proc/self/fd/{name}")
        if name is None or not Path(name).resolve().is_relative_to(self.root.resolve()):
            return fh
        return _Limited(fh, self)


class _Limited:
    def __init__(self, fh: Any, disk: _Disk) -> None:
        self._fh, self._disk = fh, disk

    def write(self, data: Any) -> int:
        disk = self._disk
        if len(data) > disk.left:
            fits = int(disk.left)
            self._fh.write(data[:fits])
            self._fh.flush()
            disk.left, disk.written = 0, disk.written + fits
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        disk.left -= len(data)
        disk.written += len(data)
        return self._fh.write(data)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._fh, attr)

    def __enter__(self) -> _Limited:
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._fh.__exit__(*exc)


def _install(monkeypatch: pytest.MonkeyPatch, disk: _Disk) -> None:
    real_fdopen, real_open = os.fdopen, pathlib.Path.open

    def fdopen(fd: int, mode: str = "r", *a: Any, **k: Any) -> Any:
        fh = real_fdopen(fd, mode, *a, **k)
        return disk.wrap(fh) if ("w" in mode or "a" in mode) else fh

    def path_open(self: Path, mode: str = "r", *a: Any, **k: Any) -> Any:
        fh = real_open(self, mode, *a, **k)
        return disk.wrap(fh) if ("w" in mode or "a" in mode) else fh

    monkeypatch.setattr(os, "fdopen", fdopen)
    monkeypatch.setattr(pathlib.Path, "open", path_open)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


_CFG = tiny_config(
    rounds=30,
    attack={"name": "sign_flip", "f": 1},
    aggregator={"name": "diversefl"},
    eval={"every": 5, "checkpoint_every": 10},
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """An uninterrupted run, and how many bytes it writes to its run directory."""
    root = tmp_path_factory.mktemp("ref")
    mp = pytest.MonkeyPatch()
    disk = _Disk(root, float("inf"))
    try:
        _install(mp, disk)
        diversefl.run(_CFG, out=root / "run")
    finally:
        mp.undo()
    assert disk.written > 10_000  # checkpoints, metrics, decisions, summary all counted
    return root / "run", disk.written


@pytest.mark.parametrize("share", [0.02, 0.2, 0.45, 0.7, 0.9, 0.99])
def test_a_full_disk_mid_run_is_one_line_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, reference, share: float
) -> None:
    ref, total = reference
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(tomli_w.dumps(_CFG))
    out = tmp_path / "run"
    disk = _Disk(tmp_path, int(share * total))
    with monkeypatch.context() as mp:
        _install(mp, disk)
        assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: No space left on device: " + str(out)), err
    assert "free some space and continue with --resume" in err and "Traceback" not in err
    assert disk.left == 0  # it did fill the disk
    # nothing half-written is left as a run file: no temp file, no summary
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not (out / "summary.json").exists()
    if (out / "checkpoint.pt").exists():
        diversefl.results.load_checkpoint(out / "checkpoint.pt")  # readable, not truncated
    # space freed: the same command with --resume, as the error advises (before the first
    # checkpoint it starts again), finishes with the numbers of the run that never stopped
    again = ["run", str(cfg), "--out", str(out), "--quiet", "--resume"]
    assert main(again) == 0, capsys.readouterr()
    assert _rows(out / "metrics.csv") == _rows(ref / "metrics.csv")
    assert (out / "decisions.csv").read_bytes() == (ref / "decisions.csv").read_bytes()


def test_a_write_error_names_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``write`` reports a full disk without a file name; the run files' writers add it."""
    from diversefl import results

    disk = _Disk(tmp_path, 3)
    with monkeypatch.context() as mp:
        _install(mp, disk)
        with pytest.raises(OSError, match="No space left") as caught:
            results.write_json(tmp_path / "summary.json", {"a": 1})
        assert caught.value.filename == str(tmp_path / "summary.json")
        assert caught.value.errno == errno.ENOSPC
        log = results.CsvLog(tmp_path / "m.csv", ["round", "x"])
        disk.left = 100
        log.flush()  # the header fits
        log.append({"round": 1, "x": "y" * 200})
        with pytest.raises(OSError) as caught:
            log.flush()
        assert caught.value.filename == str(tmp_path / "m.csv")
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]  # no summary, no temp file


def test_a_full_disk_at_fsync_and_in_sweep_csv_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a real disk a small write often fails only at flush or fsync; and a sweep's
    sweep.csv is written the same way as the run files (named, no temp file left)."""
    from diversefl import results
    from diversefl.experiments.sweep import write_sweep_csv

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as mp:
        mp.setattr(os, "fsync", full)
        with pytest.raises(OSError) as caught:
            results.save_checkpoint(tmp_path / "checkpoint.pt", {"round": 1})
        assert caught.value.filename == str(tmp_path / "checkpoint.pt")
        with pytest.raises(OSError) as caught:
            write_sweep_csv(tmp_path / "sweep.csv", [{"aggregator": "mean", "attack": "none"}])
        assert caught.value.filename == str(tmp_path / "sweep.csv")
    assert list(tmp_path.iterdir()) == []  # no half file, no temp file
    write_sweep_csv(tmp_path / "sweep.csv", [{"aggregator": "mean", "attack": "none"}])
    assert (tmp_path / "sweep.csv").read_text().splitlines()[1].startswith("mean,none")
