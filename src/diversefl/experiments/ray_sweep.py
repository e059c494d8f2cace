"""Sweeps on a Ray cluster (``diversefl sweep CONFIG --ray [ADDRESS]``): every cell not yet
finished under ``--out`` is one Ray task, with its CPU threads (and GPU share) declared.

A task runs its cell in a temporary folder on whichever node Ray picks and returns the run's
files as bytes (:mod:`diversefl.experiments.ray_payload`); this process checks them and writes
them under ``--out`` as each arrives, so the nodes share no filesystem and a stopped sweep
resumes by skipping finished cells, as a plain sweep does. A worker that dies mid-cell is
retried by Ray; runs are deterministic given their config, so the retry's files are the ones
an uninterrupted run writes. A cell that fails is reported and the sweep goes on. Ray is
imported only here, on use."""

from __future__ import annotations

import logging
import os
import re
import socket
import tempfile
import time
import tomllib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import tomli_w

from diversefl.config import Config, ConfigError, make_config, to_toml_dict
from diversefl.experiments.ray_payload import PayloadLimits, install_payload, pack_run_dir
from diversefl.experiments.sweep import (
    Cell,
    CellResult,
    _done_line,
    _pace,
    _plan,
    _summary_row,
    check_setup,
    finished_summary,
    select,
    write_sweep_csv,
)
from diversefl.experiments.sweep_record import write_overrides
from diversefl.results import RunDirError

RAY_MISSING = "--ray needs Ray, which is not installed: pip install 'diversefl[ray]'"
# "HOST:PORT" of a head (an IPv6 host in brackets), optionally as a Ray Client "ray://" address
_ADDRESS = re.compile(r"(ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):[0-9]{1,5}")


@dataclass(frozen=True)
class RayOptions:
    """Where cells run and what each asks Ray for. ``address``: ``"local"`` starts a Ray
    instance on this machine with ``cpus`` CPUs (None: all cores), ``"auto"`` joins the
    cluster this machine belongs to, ``"HOST:PORT"`` a given head. Each cell asks for
    ``threads`` CPUs (its torch threads) and, when its device is cuda, ``gpu_fraction`` of a
    GPU; Ray retries a cell whose worker dies up to ``retries`` times."""

    address: str = "local"
    cpus: int | None = None
    threads: int = 1
    gpu_fraction: float = 1.0
    retries: int = 3
    object_store_bytes: int | None = None  # a local instance's object store; None: Ray's own
    limits: PayloadLimits = field(default_factory=PayloadLimits)


@dataclass(frozen=True)
class RaySweepResult:
    """sweep.csv's rows (every finished cell of the grid) and the cells that failed here,
    by run directory name, with their one-line errors."""

    rows: list[dict[str, Any]]
    failed: dict[str, str]


def import_ray() -> ModuleType:
    """The ``ray`` module; without it a ModuleNotFoundError that names the extra to install."""
    try:
        import ray
    except ImportError:
        raise ModuleNotFoundError(RAY_MISSING, name="ray") from None
    return ray


def check_options(options: RayOptions) -> None:
    """A ConfigError naming the first setting of ``options`` that cannot work."""
    address = options.address
    if address not in ("local", "auto") and not _ADDRESS.fullmatch(address):
        raise ConfigError(
            f"--ray {address}: expected no value (a new local instance), 'auto' (the cluster "
            "this machine belongs to) or a head's HOST:PORT (put CONFIG before --ray)"
        )
    if options.threads < 1:
        raise ConfigError(f"--threads {options.threads}: a cell needs at least one CPU thread")
    fraction = options.gpu_fraction
    if not (0 < fraction <= 1 or float(fraction).is_integer()):
        raise ConfigError(
            f"--gpu-fraction {fraction:g}: a share of one GPU (0 < F <= 1) or whole GPUs"
        )
    if options.retries < 0:
        raise ConfigError(f"--retries {options.retries}: expected 0 or more")
    if options.cpus is not None and options.cpus < 1:
        raise ConfigError(f"--jobs {options.cpus}: expected an integer >= 1")


def check_devices(cells: Sequence[Cell]) -> None:
    """Under Ray a cell gets its GPU from Ray (as the only visible one): a numbered cuda
    device in a cell's config would name another, so it is refused up front."""
    for cell in cells:
        device = cell.config.engine.device
        if device.startswith("cuda:"):
            raise ConfigError(
                f"engine.device {device!r} in {cell.dirname}: under --ray each cell is given "
                "its GPU by Ray; use 'cuda'"
            )


def run_cell_files(config_toml: str, data_dir: str | None, threads: int) -> dict[str, bytes]:
    """The Ray task: run one cell (its config as TOML text) in a temporary folder with
    ``threads`` torch threads, and return the run's files as ``{name: bytes}``."""
    import torch

    from diversefl.api import run

    torch.set_num_threads(threads)
    config = make_config(tomllib.loads(config_toml))
    with tempfile.TemporaryDirectory(prefix="diversefl-cell-") as scratch:
        run_dir = Path(scratch) / "run"
        run(config, data_dir=data_dir, out=run_dir, progress=False)
        return pack_run_dir(run_dir)


def config_text(config: Config) -> str:
    """A cell's config as TOML text, as its config.toml holds it (what a task is sent)."""
    return tomli_w.dumps(to_toml_dict(config))


def task_options(cell: Cell, options: RayOptions) -> dict[str, Any]:
    """What a cell's task asks Ray for: its threads, a GPU share on a cuda device, its retries
    when the worker dies (an exception the run raises is not retried: it would raise again)."""
    gpus = options.gpu_fraction if cell.config.engine.device.startswith("cuda") else 0
    return {
        "num_cpus": options.threads,
        "num_gpus": gpus,
        "max_retries": options.retries,
        "retry_exceptions": False,
        "name": f"diversefl {cell.dirname}",
    }


def worker_data_dir(data_dir: str | None) -> str | None:
    """The data directory the tasks are sent: ``data_dir`` (or a relative $DIVERSEFL_DATA)
    made absolute, since a worker's working directory is not this one; None leaves each
    node's own $DIVERSEFL_DATA."""
    if data_dir is not None:
        return str(Path(data_dir).expanduser().resolve())
    env = os.environ.get("DIVERSEFL_DATA")
    if env and not Path(env).expanduser().is_absolute():
        return str(Path(env).expanduser().resolve())
    return None


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A ConfigError at once when nothing listens at a ``HOST:PORT`` address (Ray itself
    would retry for minutes); "local" and "auto" are left to Ray."""
    if not _ADDRESS.fullmatch(address):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(
            f"--ray {address}: nothing answers there ({err.strerror or err}); start the head "
            f"with `ray start --head --port={port}`, or use --ray auto on a node of the cluster"
        ) from None


def connect(ray: ModuleType, options: RayOptions) -> bool:
    """Start or join Ray as ``options`` say, unless this process is connected already;
    True when it connected here (and so disconnects at the end)."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if options.address == "local":  # Ray counts the cores itself when cpus is None
        kwargs["num_cpus"] = options.cpus
        kwargs["object_store_memory"] = options.object_store_bytes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # Ray's notes on future defaults
            ray.init(address=options.address, **kwargs)
    except ConnectionError as err:
        raise ConfigError(f"--ray {options.address}: {_first_line(str(err))}") from None
    return True


def run_ray_sweep(
    cells: list[Cell],
    out: str | Path,
    options: RayOptions = RayOptions(),
    data_dir: str | None = None,
    echo: Callable[[str], Any] = print,
    csv_name: str | None = "sweep.csv",
    only: list[str] | None = None,
    overrides: Sequence[str] | None = None,
) -> RaySweepResult:
    """:func:`~diversefl.experiments.sweep.run_sweep` on Ray: the cells not finished under
    ``out`` (of those ``only`` selects) run as Ray tasks and their files are written under
    ``out`` as they arrive; ``sweep.csv`` lists every finished cell of the grid. A cell whose
    run raises, or whose worker died more than ``options.retries`` times, is in ``failed``."""
    ray = import_ray()
    check_options(options)
    out = Path(out)
    summaries, todo = _plan(cells, out, {c.dirname for c in select(cells, only)}, echo)
    check_devices([cells[i] for i in todo])
    if options.address == "local":  # this machine runs the cells: check it has what they need
        check_setup([cells[i] for i in todo], data_dir, keep_data=False)
    if todo:
        check_reachable(options.address)
    out.mkdir(parents=True, exist_ok=True)
    if overrides is not None:
        write_overrides(out, overrides)
    driver = _Driver(cells, out, options, summaries, echo, csv_name)
    if todo:
        started_here = connect(ray, options)
        try:
            driver.run(ray, todo, worker_data_dir(data_dir))
        finally:
            if started_here:
                ray.shutdown()
    rows = driver.rows()
    if csv_name:
        write_sweep_csv(out / csv_name, rows)
    return RaySweepResult(rows, dict(driver.failed))


class _Driver:
    """The collecting side of a Ray sweep: submits the cells, writes each result as it
    arrives, keeps the counts (done, running, failed) and the progress lines."""

    def __init__(
        self,
        cells: list[Cell],
        out: Path,
        options: RayOptions,
        summaries: dict[int, dict[str, Any]],
        echo: Callable[[str], Any],
        csv_name: str | None,
    ) -> None:
        self.cells, self.out, self.options, self.echo = cells, out, options, echo
        self.summaries = summaries
        self.csv_name = csv_name
        self.failed: dict[str, str] = {}
        self.skipped: set[int] = set()  # another sweep process held or finished the cell
        self.todo: list[int] = []
        self.pending: dict[Any, int] = {}
        self.started = time.monotonic()

    def run(self, ray: ModuleType, todo: list[int], data_dir: str | None) -> None:
        """Submit the cells ``todo`` and collect their results until none is pending; an
        interruption cancels the tasks still queued or running."""
        self.todo = list(todo)
        self.echo(f"ray: {len(todo)} of {len(self.cells)} runs as tasks, {self._cluster(ray)}")
        remote = ray.remote(run_cell_files)
        for i in todo:
            cell = self.cells[i]
            call = remote.options(**task_options(cell, self.options))
            ref = call.remote(config_text(cell.config), data_dir, self.options.threads)
            self.pending[ref] = i
        try:
            while self.pending:
                ready, _ = ray.wait(list(self.pending), num_returns=1)
                for ref in ready:
                    self._collect(ray, ref)
        finally:
            for ref in self.pending:
                ray.cancel(ref, force=True)

    def _collect(self, ray: ModuleType, ref: Any) -> None:
        """Write one finished task's files under ``out`` (or note why it failed)."""
        i = self.pending.pop(ref)
        cell = self.cells[i]
        try:
            files = ray.get(ref)
        except ray.exceptions.RayError as err:  # before ValueError: a task's error is both
            self._fail(ray, i, task_error(err))
            return
        try:
            result = install_payload(cell, self.out / cell.dirname, files, self.options.limits)
        except (ValueError, RunDirError) as err:
            self._fail(ray, i, f"its files were refused: {err}")
            return
        self._record(ray, i, result)

    def _record(self, ray: ModuleType, i: int, result: CellResult) -> None:
        """Note a cell's result (or that another sweep process has it) and say so."""
        name = f"[{i + 1}/{len(self.cells)}] {self.cells[i].dirname}"
        if result.elsewhere:
            self.skipped.add(i)
            if result.summary is not None:
                self.summaries[i] = result.summary
            self.echo(f"{name}: {result.elsewhere}, skipped")
            return
        assert result.summary is not None  # written here: it has a summary
        self.summaries[i] = result.summary
        line = _done_line(i + 1, len(self.cells), self.cells[i], result.summary)
        self.echo(f"{line} | {self._status(ray)}")
        if self.csv_name:
            write_sweep_csv(self.out / self.csv_name, self.rows())

    def _fail(self, ray: ModuleType, i: int, error: str) -> None:
        self.failed[self.cells[i].dirname] = error
        name = f"[{i + 1}/{len(self.cells)}] {self.cells[i].dirname}"
        self.echo(f"{name}: FAILED: {error} | {self._status(ray)}")

    def _status(self, ray: ModuleType) -> str:
        """Cells done of this sweep and the time left (at the pace of its finished cells,
        as many at once as the cluster has room for), running and failed."""
        total = _cpus(ray.cluster_resources())
        slots = max(1, int(total // self.options.threads))
        busy = total - _cpus(ray.available_resources())  # other jobs on the cluster count too
        running = min(len(self.pending), round(busy / self.options.threads))
        gone = self.skipped | {i for i in self.todo if self.cells[i].dirname in self.failed}
        mine = [k for k in self.todo if k not in gone]
        rounds = {k: self.cells[k].config.rounds for k in mine}  # a task starts afresh
        elapsed = time.monotonic() - self.started
        pace = _pace(self.cells, mine, self.summaries, rounds, elapsed, slots)
        return f"{pace} | running {running}, failed {len(self.failed)}"

    def _cluster(self, ray: ModuleType) -> str:
        """The cluster's size and what a cell asks of it, for the first line."""
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0)
        threads = self.options.threads
        return (
            f"{_cpus(resources):g} CPUs"
            + (f" and {gpus:g} GPUs" if gpus else "")
            + f" in the cluster, {threads} CPU{'s' if threads > 1 else ''} per run"
        )

    def rows(self) -> list[dict[str, Any]]:
        """sweep.csv's rows: every finished cell of the grid, in grid order, including those
        another sweep process on ``out`` finished meanwhile."""
        for k, cell in enumerate(self.cells):
            run_dir = self.out / cell.dirname
            if k not in self.summaries and (run_dir / "summary.json").exists():
                done = finished_summary(cell, run_dir)
                if done is not None:
                    self.summaries[k] = done
        return [
            _summary_row(self.cells[k], self.summaries[k], self.out / self.cells[k].dirname)
            for k in sorted(self.summaries)
        ]


def _cpus(resources: dict[str, float]) -> float:
    """The CPUs in a Ray resource dict (absent when none is free)."""
    return float(resources.get("CPU", 0.0))


def task_error(err: BaseException) -> str:
    """A failed task's error in one line: the run's own exception (``ValueError: ...``), or
    what Ray says happened to the worker (it died more often than the retries allow)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {_first_line(str(cause))}"
    return f"{type(err).__name__}: {_first_line(str(err))}"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "(no message)"
