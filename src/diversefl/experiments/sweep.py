"""Grids of runs (aggregators x attacks x seeds) in one process, one run directory per cell
and a ``sweep.csv`` summarising them. Finished cells are skipped, unfinished ones resumed, so
an interrupted sweep continues where it stopped."""

from __future__ import annotations

import copy
import csv
import fnmatch
import io
import os
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from diversefl.config import (
    ConfigError,
    Override,
    apply_overrides,
    make_config,
)
from diversefl.experiments.cells import (  # noqa: F401 (re-exported: the old home)
    Cell,
    CellResult,
    _check_dataset,
    _check_device,
    _run_cell,
    check_setup,
    config_difference,
    finished_summary,
    run_cell,
)
from diversefl.experiments.sweep_record import write_overrides
from diversefl.results import atomic_write_bytes

SWEEP_COLUMNS = [
    "aggregator",
    "attack",
    "seed",
    "final_test_accuracy",
    "best_test_accuracy",
    "mean_tpr",
    "mean_fpr",
    "wall_seconds",
    "run_dir",
]
SWEEP_KEYS = {"aggregators", "attacks", "seeds"}


def _checked_label(label: Any, kind: str) -> str:
    """A grid label, which names run directories (``<defense>__<attack>__seed<k>``): a
    non-empty string without ``__`` (the separator) or a path separator."""
    if not isinstance(label, str) or not label or "__" in label or "/" in label or "\\" in label:
        raise ConfigError(
            f"sweep.{kind}: label {label!r} must be a non-empty string without '__' or '/' "
            "(it names the run directories, <defense>__<attack>__seed<k>)"
        )
    return label


def _entry(
    item: Any, kind: str
) -> tuple[str, str, dict[str, Any], list[Override], list[str] | None]:
    """(label, name, params, overrides, attack labels or None for all) from a string or a
    table entry of the grid. Only an aggregator entry may name the attacks it runs against
    (``attacks = ["none"]``: OracleSGD ignores Byzantine clients, so one run per seed), and
    put pre-aggregators before its rule (``pre = ["nnm"]``, or the name ``"nnm+krum"``); its
    label is then the pipeline's name unless it gives one."""
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict) or "name" not in item:
        raise ConfigError(
            f"sweep.{kind}: each entry is a name or a table with 'name', got {item!r}"
        )
    item = dict(item)
    if kind == "aggregators":
        item = _pipeline_entry(item)
    name = item.pop("name")
    label = _checked_label(item.pop("label", _default_label(name, item.get("pre"))), kind)
    sets = item.pop("set", {})
    if not isinstance(sets, dict):
        raise ConfigError(f"sweep.{kind}: 'set' must be a table of dotted keys, got {sets!r}")
    overrides: list[Override] = list(sets.items())  # parsed values: merged, not re-parsed
    only = None
    if kind == "aggregators" and "attacks" in item:
        only = item.pop("attacks")
        if not (isinstance(only, list) and only and all(isinstance(t, str) for t in only)):
            raise ConfigError(
                f"sweep.aggregators: {label}'s 'attacks' must be a non-empty list of attack "
                f"labels, got {only!r}"
            )
        if len(set(only)) != len(only):
            raise ConfigError(f"sweep.aggregators: {label}'s 'attacks' repeats a label: {only}")
    return label, name, item, overrides, only


def _default_label(name: Any, pre: Any) -> Any:
    """An entry's label when it gives none: its name, or with pre-aggregators the pipeline's
    name (``nnm+krum``); a malformed ``pre`` is left for the config's own check to name."""
    from diversefl.aggregators.pipeline_name import pipeline_name

    stages_named = isinstance(pre, list) and all(
        isinstance(s, str) or (isinstance(s, dict) and isinstance(s.get("name"), str)) for s in pre
    )
    return pipeline_name(name, pre) if isinstance(name, str) and stages_named else name


def _pipeline_entry(item: dict[str, Any]) -> dict[str, Any]:
    """An aggregator entry whose name is a pipeline's (``nnm+krum``) as the rule's name with
    ``pre`` (the stages before it); other entries as they are. Naming the stages both in the
    name and in ``pre`` is an error, as is a part of the name that is no pre-aggregator."""
    from diversefl.aggregators.pipeline_name import SEPARATOR, split_pipeline_name

    name = item["name"]
    if not isinstance(name, str) or SEPARATOR not in name:
        return item
    try:
        stages, rule = split_pipeline_name(name, "sweep.aggregators")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if "pre" in item:
        raise ConfigError(
            f"sweep.aggregators: {name!r} names its pre-aggregators, and the entry also sets "
            f"'pre' = {item['pre']!r}; give them in one place"
        )
    return {**item, "name": rule, "pre": stages}


def expand(raw: dict[str, Any]) -> list[Cell]:
    """Every cell of the grid, validated up front (a bad cell fails before any training)."""
    raw = copy.deepcopy(raw)
    grid = raw.pop("sweep", None)
    if not isinstance(grid, dict):
        raise ConfigError("a sweep config needs a [sweep] table with aggregators/attacks/seeds")
    unknown = sorted(set(grid) - SWEEP_KEYS)
    if unknown:
        raise ConfigError(
            f"sweep.{unknown[0]}: unknown key; allowed: {', '.join(sorted(SWEEP_KEYS))}"
        )
    # without a list, the base table (its method and settings) is the grid's one entry
    for kind in ("aggregators", "attacks"):
        if kind in grid and not (isinstance(grid[kind], list) and grid[kind]):
            raise ConfigError(
                f"sweep.{kind}: a non-empty list of entries, got {grid[kind]!r} (leave the key "
                "out to run the base config's)"
            )
    aggs = [
        _entry(a, "aggregators") for a in grid.get("aggregators", [_base_entry(raw, "aggregator")])
    ]
    atks = [_entry(a, "attacks") for a in grid.get("attacks", [_base_entry(raw, "attack")])]
    seeds = grid.get("seeds", [raw.get("seed", 0)])
    if not (
        isinstance(seeds, list)
        and seeds
        and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise ConfigError(f"sweep.seeds: a non-empty list of integers, got {seeds!r}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
    if repeated:
        raise ConfigError(
            f"sweep.seeds: {repeated[0]!r} is listed twice ({seeds}); each seed is one run "
            "directory per cell"
        )
    labels = [a[0] for a in aggs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"sweep.aggregators: duplicate labels {labels}; give each a 'label'")
    attack_labels = [k[0] for k in atks]
    if len(set(attack_labels)) != len(attack_labels):
        raise ConfigError(f"sweep.attacks: duplicate labels {attack_labels}; give each a 'label'")
    for a_label, *_, only in aggs:
        unknown_atk = [t for t in only or [] if t not in attack_labels]
        if unknown_atk:
            raise ConfigError(
                f"sweep.aggregators: {a_label}'s attacks name {unknown_atk[0]!r}, which is not "
                f"an attack of the grid ({', '.join(attack_labels)})"
            )
    cells = []
    for a_label, a_name, a_params, a_sets, only in aggs:
        for k_label, k_name, k_params, k_sets, _ in atks:
            if only is not None and k_label not in only:
                continue
            for seed in seeds:
                cfg = copy.deepcopy(raw)
                cfg["aggregator"] = {**_shared(raw, "aggregator"), "name": a_name, **a_params}
                cfg["attack"] = {**_shared(raw, "attack"), "name": k_name, **k_params}
                cfg["seed"] = seed
                cfg["name"] = f"{a_label}__{k_label}__seed{seed}"
                cfg = apply_overrides(cfg, a_sets + k_sets)
                try:
                    config = make_config(cfg)
                except ConfigError as err:
                    raise ConfigError(f"sweep cell {cfg['name']}: {err}") from None
                cells.append(Cell(a_label, k_label, seed, config))
    return cells


# Keys of the base config's [attack] and [aggregator] that are about the federation, not about
# one method, so they apply to every cell (the rest of those tables comes from the entries).
SHARED_KEYS = {
    "attack": ("f", "byzantine", "byzantine_seed", "also_seeded"),
    "aggregator": ("assumed_f",),
}


def _shared(raw: dict[str, Any], section: str) -> dict[str, Any]:
    """The base config's :data:`SHARED_KEYS` of ``section``."""
    return {k: v for k, v in raw.get(section, {}).items() if k in SHARED_KEYS[section]}


BASE_NAMES = {"aggregator": "mean", "attack": "none"}  # the config's defaults


def _base_entry(raw: dict[str, Any], section: str) -> dict[str, Any]:
    """The base config's ``section`` as a grid entry: its method name and own settings."""
    table = {k: v for k, v in raw.get(section, {}).items() if k not in SHARED_KEYS[section]}
    return {"name": BASE_NAMES[section], **table}


def _check_overrides(raw: dict[str, Any], overrides: list[str]) -> None:
    """A ``--set`` of a method setting in a section the grid lists entries for would reach no
    cell (each cell's table comes from its entry): an error that says where it belongs."""
    sweep = raw.get("sweep")
    grid: dict[str, Any] = sweep if isinstance(sweep, dict) else {}
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        section, _, name = key.partition(".")
        listed = {"aggregator": "aggregators", "attack": "attacks"}.get(section)
        if listed in grid and name not in SHARED_KEYS[section]:
            raise ConfigError(
                f"--set {key}: this sweep lists its {listed} in [sweep], and each cell's "
                f"[{section}] comes from its entry; set {name!r} in the entries (or an entry's "
                f"`set`). Of [{section}], --set reaches every cell only for: "
                + ", ".join(f"{section}.{k}" for k in SHARED_KEYS[section])
            )


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> list[Cell]:
    """Read a sweep TOML file, apply ``--set`` overrides to the base config, expand it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep file not found: {p}")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: not valid TOML: {err}") from None
    _check_overrides(raw, overrides or [])
    return expand(apply_overrides(raw, overrides or []))


def _summary_row(cell: Cell, summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    row = {
        "aggregator": cell.aggregator,
        "attack": cell.attack,
        "seed": cell.seed,
        "run_dir": run_dir.name,
    }
    for key in SWEEP_COLUMNS[3:-1]:
        row[key] = summary.get(key)
    for key in ("final_main_accuracy", "final_backdoor_accuracy"):
        if key in summary:
            row[key] = summary[key]
    if isinstance(summary.get("machine"), dict):  # which CPU: tables say what they mix
        row["cpu"] = summary["machine"].get("cpu", "")
    return row


def select(cells: list[Cell], patterns: list[str] | None) -> list[Cell]:
    """The cells whose directory name matches any of the shell-style ``patterns``
    (e.g. ``"diversefl*__label_flip__*"``); all cells when no pattern is given."""
    if not patterns:
        return cells
    chosen = [c for c in cells if any(fnmatch.fnmatchcase(c.dirname, p) for p in patterns)]
    if not chosen:
        names = ", ".join(c.dirname for c in cells[:5])
        raise ConfigError(
            f"--only {' '.join(patterns)}: matches no cell of the sweep "
            f"(cells look like {names}, ...)"
        )
    return chosen


def _rate(value: float | None) -> str:
    """A detection rate for a progress line: '-' where there is none (no attacker)."""
    return "-" if value is None else f"{value:.3f}"


def _done_line(i: int, total: int, cell: Cell, summary: dict[str, Any]) -> str:
    return (
        f"[{i}/{total}] {cell.dirname}: acc {summary['final_test_accuracy']:.4f}, "
        f"tpr {_rate(summary['mean_tpr'])}, fpr {_rate(summary['mean_fpr'])} "
        f"({summary['wall_seconds']:.1f} s)"
    )


def format_duration(seconds: float) -> str:
    """``95 s``, ``12 min`` or ``3.4 h``: the unit a person reads a sweep's time in."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def pace_text(done: int, total: int, elapsed: float, left: float | None = None) -> str:
    """Where a sweep stands after ``done`` of its ``total`` runs and ``elapsed`` wall seconds:
    the count and the time ``left`` (see :func:`seconds_left`; None: the elapsed time per
    finished run times the runs left), or the total time once all are done."""
    if done >= total:
        return f"{done}/{total} this sweep, all done in {format_duration(elapsed)}"
    if left is None:
        left = elapsed / max(done, 1) * (total - done)
    return f"{done}/{total} this sweep, ~{format_duration(left)} left"


def seconds_left(
    finished: Sequence[tuple[float, int]], rounds_left: Sequence[int], jobs: int = 1
) -> float | None:
    """Wall seconds the unfinished runs still take, ``jobs`` at a time: every round they have
    left (all of a run not started yet, those after the checkpoint of an interrupted one) at
    the pace of the ``finished`` runs, given as (wall seconds, rounds): their wall time per
    round. Each run's own wall time counts (with the CPU shared by parallel jobs, and a resumed
    run's time before), not the time since the sweep started, so runs resumed near their end
    or quick runs done first do not make the rest look short. None before any run finished."""
    work = sum(rounds for _, rounds in finished)
    if work <= 0:
        return None
    pending = [r for r in rounds_left if r > 0]
    at_once = max(1, min(jobs, len(pending)))
    return sum(wall for wall, _ in finished) / work * sum(pending) / at_once


def last_metrics_round(metrics_csv: Path) -> int:
    """The round of the last row of ``metrics.csv`` (0 when there is none)."""
    if not metrics_csv.exists():
        return 0
    last = 0
    with metrics_csv.open(newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                last = int(row["round"])
            except (KeyError, TypeError, ValueError):
                continue
    return last


def rounds_to_run(cell: Cell, run_dir: Path) -> int:
    """Rounds ``cell`` has left in ``run_dir``: those after its checkpoint (its last metrics
    row, near enough), or all of them without one."""
    if not (run_dir / "checkpoint.pt").exists():
        return cell.config.rounds
    return max(0, cell.config.rounds - last_metrics_round(run_dir / "metrics.csv"))


def _exit_with_parent(parent_pid: int, poll_seconds: float = 0.5) -> None:
    """Pool-worker initializer: end this worker when the sweep process is gone.

    A worker whose parent was killed would otherwise finish its cell as an orphan, and a
    restarted sweep could then write into the same run directory at the same time. The
    interrupted cell resumes from its last checkpoint on the next run.
    """

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _plan(
    cells: list[Cell], out: Path, chosen: set[str], echo: Any
) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """The summaries of the cells already finished in ``out`` (by grid index) and the indices
    of the chosen cells still to run; an interrupted run whose config differs from its cell's
    is refused here, before any cell runs, not when the sweep gets there."""
    summaries: dict[int, dict[str, Any]] = {}
    todo = []
    for i, cell in enumerate(cells):
        done = finished_summary(cell, out / cell.dirname)
        if done is None:
            if cell.dirname in chosen:
                todo.append(i)
                if (out / cell.dirname / "config.toml").exists():  # an interrupted run
                    differs = config_difference(cell, out / cell.dirname)
                    if differs:  # found before any cell runs, not when the sweep gets there
                        raise ConfigError(
                            f"{out / cell.dirname} holds an unfinished run with a different "
                            f"config ({differs}); delete it to run the cell afresh, or use "
                            "another --out"
                        )
        else:
            summaries[i] = done
            if cell.dirname not in chosen:
                continue  # finished cells outside --only count for sweep.csv, not the log
            echo(
                f"[{i + 1}/{len(cells)}] {cell.dirname}: done already "
                f"(acc {done['final_test_accuracy']:.4f})"
            )
    return summaries, todo


def worker_pool(jobs: int) -> Any:
    """``jobs`` spawned worker processes that end when this process is gone
    (:func:`_exit_with_parent`): the pool every ``--jobs`` mode runs its cells in."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=mp.get_context("spawn"),
        initializer=_exit_with_parent,
        initargs=(os.getpid(),),
    )


def _run_in_pool(
    cells: list[Cell],
    todo: list[int],
    out: Path,
    data_dir: str | None,
    jobs: int,
    record: Callable[[int, CellResult], None],
) -> None:
    """Run the cells ``todo`` in ``jobs`` spawned worker processes, each with an equal share
    of torch's threads, and ``record`` each result as it finishes."""
    from concurrent.futures import as_completed

    import torch

    threads = max(1, torch.get_num_threads() // jobs)
    with worker_pool(jobs) as pool:
        futures = {
            pool.submit(_run_cell, cells[i], out / cells[i].dirname, data_dir, False, threads): i
            for i in todo
        }
        for fut in as_completed(futures):
            record(futures[fut], fut.result())


def _run_packs(
    cells: list[Cell],
    todo: list[int],
    out: Path,
    data_dir: str | None,
    jobs: int,
    pack: int | str,
    record: Callable[[int, CellResult], None],
) -> None:
    """Run the cells ``todo`` in packs (:func:`~diversefl.experiments.packing.plan_packs`),
    the largest packs first, ``jobs`` packs at a time; ``record`` each cell's result. A cell
    that failed (its model diverged) does not stop its pack: its error is raised at the end."""
    from concurrent.futures import as_completed

    import torch

    from diversefl.experiments.packing import plan_packs, run_pack

    index = {cells[i].dirname: i for i in todo}
    packs = sorted(plan_packs([cells[i] for i in todo], out, pack, data_dir),
                   key=lambda p: -len(p.cells))  # fmt: skip
    errors: list[BaseException] = []

    def handle(cells_of: tuple[Cell, ...], results: list[CellResult | BaseException]) -> None:
        for cell, res in zip(cells_of, results, strict=True):
            if isinstance(res, BaseException):
                errors.append(res)
            else:
                record(index[cell.dirname], res)

    if jobs <= 1 or len(packs) <= 1:
        for p in packs:
            handle(p.cells, run_pack(p, out, data_dir))
    else:
        threads = max(1, torch.get_num_threads() // jobs)
        with worker_pool(jobs) as pool:
            futures = {pool.submit(run_pack, p, out, data_dir, threads): p for p in packs}
            for fut in as_completed(futures):
                handle(futures[fut].cells, fut.result())
    if errors:
        raise errors[0]


def run_sweep(
    cells: list[Cell],
    out: str | Path,
    data_dir: str | None = None,
    progress: bool = True,
    echo: Any = print,
    csv_name: str | None = "sweep.csv",
    jobs: int = 1,
    only: list[str] | None = None,
    overrides: Sequence[str] | None = None,
    pack: int | str | None = None,
) -> list[dict[str, Any]]:
    """Run every cell into ``out/<aggregator>__<attack>__seed<k>`` and write ``sweep.csv``
    (``csv_name=None``: no csv, e.g. when only part of a grid is run).

    ``jobs`` > 1 runs that many cells at once in worker processes, each with an equal share
    of the CPU threads; every run is still seeded on its own, so the numbers do not depend
    on ``jobs``. ``only`` (shell-style patterns on cell names) runs just the matching cells;
    ``sweep.csv`` still lists every finished cell of the grid, in grid order. ``overrides``
    (the command line's ``--set``, ``--rounds``, ...) are recorded in ``out`` for
    ``sweep --status`` (:mod:`diversefl.experiments.sweep_record`). ``pack`` (K, or "auto")
    runs cells that share their batches K at a time in one process
    (:mod:`diversefl.experiments.packing`): faster for small models, equal to the cells run
    alone up to float rounding."""
    out = Path(out)
    summaries, todo = _plan(cells, out, {c.dirname for c in select(cells, only)}, echo)
    # a missing dataset or device fails here, before any directory is made, rather than in
    # the first cell (which would be left looking interrupted); finished cells need neither
    check_setup([cells[i] for i in todo], data_dir, keep_data=jobs <= 1 or len(todo) <= 1)
    out.mkdir(parents=True, exist_ok=True)
    if overrides is not None:
        write_overrides(out, overrides)
    rounds_left = {k: rounds_to_run(cells[k], out / cells[k].dirname) for k in todo}
    started = time.monotonic()
    elsewhere: set[int] = set()  # cells another process was running when this one got there

    def current_rows() -> list[dict[str, Any]]:
        """sweep.csv rows of every finished cell, including those another sweep process on
        ``out`` has finished since this one started."""
        for k, c in enumerate(cells):
            if k not in summaries and (out / c.dirname / "summary.json").exists():
                done = finished_summary(c, out / c.dirname)
                if done is not None:
                    summaries[k] = done
        return [
            _summary_row(cells[k], summaries[k], out / cells[k].dirname) for k in sorted(summaries)
        ]

    def record(i: int, result: CellResult) -> None:
        if result.elsewhere:
            elsewhere.add(i)
            if result.summary is not None:
                summaries[i] = result.summary
            echo(f"[{i + 1}/{len(cells)}] {cells[i].dirname}: {result.elsewhere}, skipped")
            return
        assert result.summary is not None  # run here: it has a summary
        summaries[i] = result.summary
        mine = [k for k in todo if k not in elsewhere]
        pace = _pace(cells, mine, summaries, rounds_left, time.monotonic() - started, jobs)
        echo(f"{_done_line(i + 1, len(cells), cells[i], result.summary)} | {pace}")
        if csv_name:
            write_sweep_csv(out / csv_name, current_rows())

    if pack:
        _run_packs(cells, todo, out, data_dir, jobs, pack, record)
    elif jobs <= 1 or len(todo) <= 1:
        for i in todo:
            record(i, _run_cell(cells[i], out / cells[i].dirname, data_dir, progress))
    else:
        _run_in_pool(cells, todo, out, data_dir, jobs, record)
    rows = current_rows()
    if csv_name:
        write_sweep_csv(out / csv_name, rows)
    return rows


def _pace(
    cells: list[Cell],
    mine: list[int],
    summaries: dict[int, dict[str, Any]],
    left: dict[int, int],
    elapsed: float,
    jobs: int,
) -> str:
    """:func:`pace_text` of the cells ``mine`` (those this process runs): how many finished,
    and the time the others take (:func:`seconds_left` of their rounds ``left``)."""
    done = [k for k in mine if k in summaries]
    finished = [(float(summaries[k]["wall_seconds"]), cells[k].config.rounds) for k in done]
    pending = [left[k] for k in mine if k not in summaries]
    return pace_text(len(done), len(mine), elapsed, seconds_left(finished, pending, jobs))


def write_sweep_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """One row per run: labels, final/best accuracy, detection rates, wall time. Written to
    a temporary file and renamed, so a reader (or a second sweep process) never sees half."""
    columns = list(SWEEP_COLUMNS)
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    atomic_write_bytes(path, buf.getvalue().encode())
