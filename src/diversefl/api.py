"""The Python API: ``diversefl.run(config) -> RunResult`` for notebooks and scripts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from diversefl.cell_lock import CellLock, held_here, holder
from diversefl.config import (
    Config,
    apply_overrides,
    load_config,
    make_config,
    to_toml_dict,
)
from diversefl.config_diff import setting_differences
from diversefl.data.arrays import UserData, from_arrays, from_clients
from diversefl.data.datasets import Dataset
from diversefl.engine.allocator import retain_freed_memory
from diversefl.engine.federation import Federation
from diversefl.engine.inputs import ModelFactory
from diversefl.engine.preflight import build_federation
from diversefl.engine.resume import read_resume_point
from diversefl.engine.runner import RunResult, finished_without_checkpoint, train
from diversefl.results import RunDirError, check_out_path, check_run_dir, prepare_run_dir


def resolve_config(
    config: Config | dict[str, Any] | str | Path | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """Turn a Config, a nested dict, a TOML path or None (defaults) into a validated Config."""
    if isinstance(config, Config):
        raw = to_toml_dict(config, defaults=False)  # another rule named: not this one's settings
        return make_config(apply_overrides(raw, overrides or [])) if overrides else config
    if isinstance(config, dict):
        return make_config(apply_overrides(config, overrides or []))
    return load_config(config, overrides)


def run(
    config: Config | dict[str, Any] | str | Path | None = None,
    *,
    data_dir: str | Path | None = None,
    out: str | Path | Literal[False] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    overrides: list[str] | None = None,
    data: Any = None,
    model: ModelFactory | None = None,
) -> RunResult:
    """Run one experiment and return its metrics and summary.

    ``data`` replaces the config's dataset with your own, held in memory (numpy arrays or
    torch tensors): ``(x_train, y_train, x_test, y_test)``, one pool the configured partition
    splits; or ``{"clients": [(x, y), ...], "test": (x_test, y_test)}``, one entry per client
    (unequal sizes allowed), which sets ``data.partition = "natural"`` and ``clients.n`` to the
    number of clients. ``model`` is a factory ``(input_shape, num_classes) -> nn.Module`` that
    replaces ``[model]`` (batch-norm models are refused: see :mod:`diversefl.models`).

    ``config`` may be a :class:`Config`, a dict shaped like the TOML file, a path to a TOML
    file, or None for the defaults. The run directory (config.toml, metrics.csv, summary.json,
    checkpoint.pt; ``RunResult.out_dir``) is written to ``out``, by default (``out=None``) to a
    new ``runs/<name>-<YYYYmmdd-HHMMSS>`` under the current directory, as ``diversefl run``
    does; ``out=False`` writes no files. It is locked while the run writes it (a directory
    another process is writing is a RunDirError). With ``resume`` (which needs ``out``), a
    config that differs from the saved one only by more ``rounds`` extends the run from its
    checkpoint (not a sweep's cell); any other difference is an error naming the key.
    ``progress`` shows the command line's progress bar (``progress=False``: silent).
    On Linux it also keeps freed tensor memory in the process for reuse (see
    :mod:`diversefl.engine.allocator`; ``DIVERSEFL_RETAIN_MEMORY=0`` turns that off).
    """
    retain_freed_memory()
    given = user_data(data)
    if given is not None and given.client_parts is not None:
        natural = ["data.partition=natural", f"clients.n={len(given.client_parts)}"]
        overrides = [*(overrides or []), *natural]
    cfg = resolve_config(config, overrides)
    if resume and (out is None or out is False):
        raise ValueError("resume=True needs out=RUN_DIR, the run directory to continue")
    if out is None:
        stem = Path(config).stem if isinstance(config, str | Path) else "run"
        out = default_run_dir(cfg.name or stem)
    out_dir = None
    created: Path | None = None
    lock: CellLock | None = None
    if out is not False:
        out_dir = check_out_path(Path(out))
        created = first_missing(out_dir)
        lock = _lock_run_dir(out_dir)
    try:
        inputs = (given, model)
        return _run_locked(cfg, config, out_dir, data_dir, resume, overwrite, progress, inputs)
    finally:
        if lock is not None:
            lock.release_and_remove()
        if out_dir is not None and created is not None:
            # a run that failed before writing anything (e.g. a missing dataset) leaves no
            # empty directories behind; anything with files in it is kept for --resume
            remove_empty_dirs(out_dir, created)


def default_run_dir(name: str, root: str | Path = "runs", now: float | None = None) -> Path:
    """``root/<name>-<YYYYmmdd-HHMMSS>`` (local time ``now``, default the current time), with
    ``-2``, ``-3``, ... appended while that path is taken (two runs started in one second)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = Path(root) / f"{name}-{stamp}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def _lock_run_dir(out_dir: Path) -> CellLock | None:
    """Take ``out_dir``'s lock (None when this process holds it: a sweep's cell), so that a
    second ``run --overwrite`` or ``--resume`` on a run in progress is refused, not mixed in."""
    if held_here(out_dir):
        return None
    if out_dir.exists() and not out_dir.is_dir():
        raise RunDirError(f"--out {out_dir} is a file, not a directory")
    lock = CellLock(out_dir)
    if not lock.acquire():
        raise RunDirError(
            f"{out_dir} is in use by {holder(out_dir) or 'another process'}: a run is writing "
            "it now; wait for it to end (or stop it) before --resume or --overwrite"
        )
    return lock


def _run_locked(
    cfg: Config,
    config: Config | dict[str, Any] | str | Path | None,
    out_dir: Path | None,
    data_dir: str | Path | None,
    resume: bool,
    overwrite: bool,
    progress: bool,
    inputs: tuple[UserData | None, ModelFactory | None] = (None, None),
) -> RunResult:
    """:func:`run` once the run directory is locked. Everything that can be checked is checked
    before the directory is touched: its state, the saved config, the checkpoint and logs a
    resume goes on from, the dataset, and that the model fits it."""
    data = None if data_dir is None else str(data_dir)
    sim: Federation | None = None
    if out_dir is not None:
        resuming = check_run_dir(out_dir, resume=resume, overwrite=overwrite)
        if resuming:
            cfg = _resumed_config(cfg, config, out_dir)
        if not (resuming and finished_without_checkpoint(out_dir)):
            if resuming:
                read_resume_point(cfg, out_dir)  # before the dataset loads; again with the model
            sim = build_federation(cfg, data, *inputs)
        prepare_run_dir(out_dir, resume=resume, overwrite=overwrite)
        resume = resuming
    elif inputs != (None, None):
        sim = build_federation(cfg, data, *inputs)
    return train(cfg, out_dir, data_dir=data, resume=resume, progress=progress, sim=sim)


def user_data(data: Any) -> UserData | None:
    """``run(data=...)`` as a :class:`UserData`: a 4-tuple of arrays, a dict with ``clients``
    and ``test``, a :class:`Dataset` or a :class:`UserData` (None: the config's dataset)."""
    if data is None or isinstance(data, UserData):
        return data
    if isinstance(data, Dataset):
        return UserData(data)
    if isinstance(data, dict) and set(data) == {"clients", "test"}:
        return from_clients(data["clients"], tuple(data["test"]))
    if isinstance(data, tuple | list) and len(data) == 4:
        return from_arrays(*data)
    raise TypeError(
        "data: expected (x_train, y_train, x_test, y_test) or {'clients': [(x, y), ...], "
        f"'test': (x, y)}}, got {type(data).__name__}"
    )


def _resumed_config(
    cfg: Config, config: Config | dict[str, Any] | str | Path | None, out_dir: Path
) -> Config:
    """The config a resume goes on with: the saved one, or ``cfg`` when it only has more
    rounds; any other difference is an error naming the key."""
    if not (out_dir / "config.toml").exists():
        return cfg
    saved = load_config(out_dir / "config.toml")
    if config is None or to_toml_dict(saved) == to_toml_dict(cfg):
        return saved
    if not _extends(saved, cfg, out_dir):
        raise ValueError(
            f"--resume: the config differs from {out_dir / 'config.toml'} ("
            f"{setting_differences(to_toml_dict(saved), to_toml_dict(cfg), NAMES)[0]}); a run "
            "continues with the settings it started with (only `rounds` may grow, "
            "to extend a run that has its checkpoint.pt)"
        )
    return cfg  # more rounds (the run drops summary.json once it goes on)


NAMES = ("saved", "now")  # how a resume's error names the two configs


def _extends(saved: Config, cfg: Config, out_dir: Path) -> bool:
    """Whether ``cfg`` is ``saved`` with more rounds, and ``out_dir`` has the checkpoint to go
    on from. Nothing in a round depends on the total (schedules, draws and attacks are keyed
    by round), so the extended run follows the trajectory of one started with more rounds."""
    longer = saved.model_copy(update={"rounds": cfg.rounds})
    if not (cfg.rounds > saved.rounds and to_toml_dict(longer) == to_toml_dict(cfg)):
        return False
    if (out_dir.parent / "sweep.csv").exists():
        raise RunDirError(
            f"{out_dir} is a cell of the sweep in {out_dir.parent}: extended, it would no "
            "longer match its grid; copy it elsewhere and extend the copy"
        )
    return (out_dir / "checkpoint.pt").exists()


def first_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` (itself included) that does not exist yet."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


def remove_empty_dirs(path: Path, top: Path) -> None:
    """Remove ``path`` and its parents up to ``top`` while they are empty directories."""
    for p in (path, *path.parents):
        if not p.is_dir() or any(p.iterdir()):
            return
        p.rmdir()
        if p == top:
            return
