"""One cell of a sweep: what it is (:class:`Cell`), whether it is finished in a sweep folder,
the checks of its device and dataset, and how one process runs it under its lock
(:func:`run_cell`). The sweep (:mod:`diversefl.experiments.sweep`), packs
(:mod:`diversefl.experiments.packing`) and Ray (:mod:`diversefl.experiments.ray_sweep`) all run
cells through this module."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diversefl.cell_lock import CellLock, holder
from diversefl.config import Config, ConfigError, make_config, to_toml_dict
from diversefl.results import read_summary


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: its labels and its fully validated config."""

    aggregator: str
    attack: str
    seed: int
    config: Config

    @property
    def dirname(self) -> str:
        return f"{self.aggregator}__{self.attack}__seed{self.seed}"


def finished_summary(cell: Cell, run_dir: Path) -> dict[str, Any] | None:
    """The saved summary of a finished run of ``cell``, or None when it still has to run."""
    summary_path = run_dir / "summary.json"
    if not summary_path.exists() or (run_dir / ".running").exists():
        return None
    differs = config_difference(cell, run_dir)
    if differs:
        raise ConfigError(
            f"{run_dir} holds a finished run with a different config ({differs}); use another --out"
        )
    return read_summary(summary_path)


def config_difference(cell: Cell, run_dir: Path) -> str:
    """'' when ``run_dir/config.toml`` is ``cell``'s config, else the first key that differs
    ('aggregator.beta: saved 0.1, grid 0.2'). Compared as validated configs, so settings
    added later with defaults still match."""
    from diversefl.config_diff import setting_differences

    saved = to_toml_dict(make_config(tomllib.loads((run_dir / "config.toml").read_text())))
    differs = setting_differences(saved, to_toml_dict(cell.config), ("saved", "grid"))
    return differs[0] if differs else ""


def _check_device(device: str) -> None:
    """Raise ConfigError when this machine lacks ``device`` (the run's own check, early)."""
    from diversefl.engine.devices import usable_device

    usable_device(device)


def _check_dataset(name: str, data_dir: str | None, keep: bool) -> None:
    """Run the loader's own checks of dataset ``name`` in ``data_dir`` (its DataError)."""
    from diversefl.data import clear_cache, load_cifar, load_dataset, resolve_data_dir

    # keep: load it as a run does, so runs in this process take it from the loader's cache
    # (no second load). Else (--jobs workers load their own) CIFAR is checked as raw arrays,
    # 0.2-0.5 s, not kept, instead of holding ~0.7 GB of normalised images here (2-3 s).
    if keep:
        load_dataset(name, data_dir)
    elif name in ("cifar10", "cifar100"):
        load_cifar(resolve_data_dir(data_dir), "cifar10" if name == "cifar10" else "cifar100")
    else:
        load_dataset(name, data_dir)
        clear_cache()  # checked; the --jobs workers load their own copies


def check_setup(cells: list[Cell], data_dir: str | None = None, keep_data: bool = True) -> None:
    """Check once per device and dataset of ``cells`` that they exist here, before any run."""
    for device in dict.fromkeys(c.config.engine.device for c in cells):
        _check_device(device)
    for name in dict.fromkeys(c.config.data.dataset for c in cells):
        _check_dataset(name, data_dir, keep_data)


@dataclass(frozen=True)
class CellResult:
    """What became of one cell in this process: run here (``elsewhere`` empty), found
    finished by another sweep process, or skipped because another process runs it
    (``summary`` None); ``elsewhere`` says which."""

    summary: dict[str, Any] | None
    elsewhere: str = ""


def claim_cell(cell: Cell, run_dir: Path) -> CellLock | CellResult:
    """Take ``run_dir``'s lock for ``cell`` and return it, held; or, when another process holds
    it or the cell is already finished there, a :class:`CellResult` saying so (lock released).
    How the sweep, packs and Ray all claim a cell before writing its run directory."""
    lock = CellLock(run_dir)
    if not lock.acquire():
        return CellResult(None, f"running in {holder(run_dir) or 'another process'}")
    try:
        done = finished_summary(cell, run_dir)
    except BaseException:
        lock.release()
        raise
    if done is not None:
        lock.release()
        return CellResult(done, "finished by another process")
    return lock


def run_cell(
    cell: Cell, run_dir: Path, data_dir: str | None, progress: bool, threads: int = 0
) -> CellResult:
    """Run (or resume) one cell into ``run_dir`` under its lock, so that a second sweep
    process on the same directory never runs it at the same time; a cell another process
    finished meanwhile is not run again. Also the worker function of ``--jobs``:
    ``threads`` > 0 caps torch's intra-op threads in that process."""
    import torch

    from diversefl.api import run

    if threads > 0:
        torch.set_num_threads(threads)
    # before the lock creates the run directory: a --jobs worker checks (and loads) the data
    # itself, and in the sweep's own process this finds what run_sweep checked in the cache
    check_setup([cell], data_dir)
    lock = claim_cell(cell, run_dir)
    if isinstance(lock, CellResult):
        return lock
    try:
        resume = (run_dir / "checkpoint.pt").exists()
        run_dir.mkdir(parents=True, exist_ok=True)  # made by the lock, except without fcntl
        (run_dir / ".running").touch()
        (run_dir / "summary.json").unlink(missing_ok=True)
        result = run(
            cell.config,
            data_dir=data_dir,
            out=run_dir,
            resume=resume,
            overwrite=not resume,
            progress=progress,
        )
        (run_dir / ".running").unlink()
        return CellResult(result.summary)
    finally:
        lock.release()


_run_cell = run_cell  # the sweep's older private name
