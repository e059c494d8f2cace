"""Before its first cell starts, a sweep checks once that every dataset it needs is in the data
directory and every device it names exists: a missing one fails with the loader's (or the
device's) error, exit status 2, and leaves nothing behind: no sweep directory, no run
directory, no ``.running`` or ``.lock``."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w
import torch
from conftest import tiny_config

from diversefl.cli import main
from diversefl.config import ConfigError
from diversefl.data import DataError, clear_cache
from diversefl.data.datasets import _load_cached
from diversefl.experiments import sweep
from diversefl.experiments.sweep import expand, run_sweep


def _sweep_file(tmp_path: Path, **sections) -> Path:
    """A 2 x 2 grid (mean/median x seeds 0, 1) of a tiny config, as a sweep TOML file."""
    raw = tiny_config(rounds=2, **sections)
    raw["sweep"] = {"aggregators": ["mean", "median"], "seeds": [0, 1]}
    path = tmp_path / "grid.toml"
    path.write_text(tomli_w.dumps(raw))
    return path


def _flat(text: str) -> str:
    """``text`` without whitespace: undoes the console's line wrapping, mid-word included."""
    return "".join(text.split())


def _data_without_cifar(tmp_path: Path, mnist_dir: Path) -> Path:
    """A data directory holding (a link to) MNIST only."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "mnist").symlink_to(Path(mnist_dir, "mnist").resolve(), target_is_directory=True)
    return root


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_missing_dataset_fails_before_any_cell_and_leaves_nothing(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture, jobs: str
):
    data = _data_without_cifar(tmp_path, mnist_dir)
    grid = _sweep_file(tmp_path, data={"dataset": "cifar10"})
    out = tmp_path / "sw"
    argv = ["sweep", str(grid), "--out", str(out), "--data-dir", str(data), "--quiet"]
    assert main([*argv, "--jobs", jobs]) == 2
    err = _flat(capsys.readouterr().err)
    assert "cifar-10-batches-py" in err and "datafetchcifar10" in err  # the loader's error
    assert not out.exists()  # no sweep directory, so no run directory, .running or .lock
    assert main([*argv, "--status"]) == 0
    status = _flat(capsys.readouterr().out)
    assert "4notstarted" in status and _flat(f"{out} does not exist yet") in status


def test_missing_data_directory_fails_before_any_cell(tmp_path: Path):
    cells = expand({**tiny_config(data={"dataset": "mnist"}), "sweep": {"seeds": [0, 1]}})
    out = tmp_path / "sw"
    with pytest.raises(DataError, match="does not exist"):
        run_sweep(cells, out, str(tmp_path / "nowhere"), progress=False, echo=lambda m: None)
    assert not out.exists()


def test_missing_cuda_fails_before_any_cell_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    grid = _sweep_file(tmp_path, engine={"device": "cuda"})
    out = tmp_path / "sw"
    assert main(["sweep", str(grid), "--out", str(out), "--quiet"]) == 2
    assert _flat("torch sees no CUDA device on this machine (use --device cpu)") in _flat(
        capsys.readouterr().err
    )
    assert not out.exists()


def test_cuda_index_beyond_the_devices_fails_before_any_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cells = expand({**tiny_config(engine={"device": "cuda:2"}), "sweep": {"seeds": [0]}})
    out = tmp_path / "sw"
    with pytest.raises(ConfigError, match=r"'cuda:2': torch sees 2 CUDA devices .*cuda:0, cuda:1"):
        run_sweep(cells, out, progress=False, echo=lambda m: None)
    assert not out.exists()


def test_setup_is_checked_once_per_dataset_and_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    seen: list[tuple] = []
    from diversefl.experiments import cells as cell_module  # where the checks live

    monkeypatch.setattr(cell_module, "_check_dataset", lambda *a: seen.append(("data", *a)))
    monkeypatch.setattr(cell_module, "_check_device", lambda d: seen.append(("device", d)))
    raw = {**tiny_config(), "sweep": {"aggregators": ["mean", "median"], "seeds": [0, 1, 2]}}
    cells = expand(raw) + expand({**raw, "data": {"dataset": "mnist"}})
    sweep.check_setup(cells, "somewhere")
    assert seen == [
        ("device", "cpu"),
        ("data", "digits", "somewhere", True),
        ("data", "mnist", "somewhere", True),
    ]


def test_the_check_loads_the_data_the_cells_then_use(tmp_path: Path, mnist_dir: Path):
    """Cells run in this process take the checked dataset from the loader's cache: the check
    costs no second load."""
    clear_cache()
    cells = expand({**tiny_config(rounds=1, data={"dataset": "mnist"}), "sweep": {"seeds": [0, 1]}})
    run_sweep(cells, tmp_path / "sw", data_dir=str(mnist_dir), progress=False, echo=lambda m: None)
    assert _load_cached.cache_info().misses == 1


def test_finished_cells_need_no_data(tmp_path: Path, mnist_dir: Path):
    """Only cells still to run are checked: a finished grid rewrites sweep.csv without data."""
    cells = expand({**tiny_config(rounds=1, data={"dataset": "mnist"}), "sweep": {"seeds": [0]}})
    out = tmp_path / "sw"
    run_sweep(cells, out, data_dir=str(mnist_dir), progress=False, echo=lambda m: None)
    rows = run_sweep(cells, out, data_dir=str(tmp_path), progress=False, echo=lambda m: None)
    assert [r["run_dir"] for r in rows] == ["mean__none__seed0"]


def test_a_cell_checks_its_setup_before_taking_its_directory(tmp_path: Path, mnist_dir: Path):
    """A cell run on its own (as a --jobs worker runs it) fails on missing data before it
    creates its run directory, its lock or its .running marker."""
    data = _data_without_cifar(tmp_path, mnist_dir)
    (cell,) = expand({**tiny_config(data={"dataset": "cifar10"}), "sweep": {"seeds": [0]}})
    run_dir = tmp_path / "sw" / cell.dirname
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        sweep._run_cell(cell, run_dir, str(data), progress=False)
    assert not (tmp_path / "sw").exists()


def test_a_sweep_runs_where_flock_does_not_exist(tmp_path: Path, monkeypatch):
    """Without fcntl (Windows) locking is a no-op: the cell directory must still be made
    before the sweep marks it running."""
    from diversefl import cell_lock

    monkeypatch.setattr(cell_lock, "fcntl", None)
    cells = expand({**tiny_config(rounds=2), "sweep": {"seeds": [0]}})
    rows = run_sweep(cells, tmp_path / "sw", None, progress=False, echo=lambda m: None)
    assert len(rows) == 1 and (tmp_path / "sw" / cells[0].dirname / "summary.json").is_file()
