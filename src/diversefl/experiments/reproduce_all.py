"""``diversefl reproduce all``: every MNIST figure of the paper in one command. The runs of all
their presets share one pool of ``jobs`` workers, longest first (by the per-round times measured
on this machine, :mod:`~diversefl.experiments.calibrate`), then each figure is drawn; the summary
gives the wall time and each figure's share of the work in cell-seconds (the wall seconds of the
runs it shows)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diversefl.config import load_config
from diversefl.experiments.calibrate import round_seconds
from diversefl.experiments.cells import Cell, CellResult, check_setup, finished_summary, run_cell
from diversefl.experiments.reproduce import (
    DEFAULT_OUT,
    PRESETS,
    draw_figure,
    figure_cells,
    mnist_figures,
    preset_cells,
    run_root,
)
from diversefl.experiments.sweep import (
    _plan,
    _summary_row,
    format_duration,
    pace_text,
    seconds_left,
    worker_pool,
    write_sweep_csv,
)

AGAIN = "diversefl reproduce all"  # the command that finishes what another process held


@dataclass
class PresetRuns:
    """One preset's grid in ``reproduce all``: its run root, every cell of the grid, the run
    directory names its figures show, and the summaries of its finished cells by grid index."""

    preset: str
    root: Path
    grid: list[Cell]
    chosen: set[str]
    summaries: dict[int, dict[str, Any]] = field(default_factory=dict)

    def refresh(self) -> None:
        """Also take the cells another sweep process on the same root has finished since."""
        for k, c in enumerate(self.grid):
            if k not in self.summaries and (self.root / c.dirname / "summary.json").exists():
                done = finished_summary(c, self.root / c.dirname)
                if done is not None:
                    self.summaries[k] = done

    def write_csv(self) -> None:
        """``sweep.csv`` of every finished cell of the grid, in grid order (``plot --table``)."""
        rows = [
            _summary_row(self.grid[k], self.summaries[k], self.root / self.grid[k].dirname)
            for k in sorted(self.summaries)
        ]
        write_sweep_csv(self.root / "sweep.csv", rows)

    def finished(self) -> dict[str, dict[str, Any]]:
        """Summaries of the finished cells by run directory name."""
        return {self.grid[k].dirname: s for k, s in self.summaries.items()}


@dataclass(frozen=True)
class FigureShare:
    """A figure's part of the work: its finished runs and their wall seconds together."""

    runs: int
    cell_seconds: float


@dataclass(frozen=True)
class AllResult:
    """What ``reproduce all`` did: the figures drawn, the command's wall time, how many runs it
    ran (of ``runs`` distinct ones), their cell-seconds (each run once) and each figure's."""

    paths: list[Path]
    wall_seconds: float
    ran: int
    runs: int
    cell_seconds: float
    shares: dict[str, FigureShare]


def threads_per_run(jobs: int) -> int:
    """Torch threads one of ``jobs`` runs at once gets (as ``sweep --jobs`` shares them)."""
    import torch

    return max(1, torch.get_num_threads() // jobs)


def measured_round_seconds(
    jobs: int = 1, refresh: bool = False, echo: Callable[[str], Any] = print
) -> dict[str, float]:
    """Seconds per round of each MNIST figure's preset on this machine, at the threads a run
    gets with ``jobs`` at once: cached, or measured by a short run of the preset's base config
    (:func:`~diversefl.experiments.calibrate.round_seconds`), by preset name."""
    presets = dict.fromkeys(f.preset for f in mnist_figures())
    configs = {p: load_config(PRESETS / f"{p}.toml") for p in presets}
    return round_seconds(configs, threads_per_run(jobs), refresh, echo)


def figure_estimates(per_round: dict[str, float], jobs: int = 1) -> dict[str, tuple[int, float]]:
    """(runs, estimated wall seconds with ``jobs`` runs at once) of each MNIST figure and of
    ``all`` of them (each distinct run once): runs x rounds x the preset's seconds per round
    (``per_round``, by preset), shared among ``min(jobs, runs)`` workers."""
    out: dict[str, tuple[int, float]] = {}
    distinct: dict[tuple[str, str], float] = {}
    for fig in mnist_figures():
        costs = [c.config.rounds * per_round[fig.preset] for c in figure_cells(fig)]
        out[fig.name] = (len(costs), sum(costs) / max(1, min(jobs, len(costs))))
        for c, cost in zip(figure_cells(fig), costs, strict=True):
            distinct[(fig.preset, c.dirname)] = cost
    out["all"] = (len(distinct), sum(distinct.values()) / max(1, min(jobs, len(distinct))))
    return out


def _preset_runs(root: Path, rounds: int | None, device: str | None) -> list[PresetRuns]:
    """One :class:`PresetRuns` per preset of the MNIST figures, choosing their cells."""
    groups: dict[str, PresetRuns] = {}
    for fig in mnist_figures():
        if fig.preset not in groups:
            grid = preset_cells(fig, rounds, device)
            groups[fig.preset] = PresetRuns(fig.preset, run_root(root, fig, rounds), grid, set())
        groups[fig.preset].chosen |= {c.dirname for c in figure_cells(fig, rounds, device)}
    return list(groups.values())


@dataclass(frozen=True)
class Unit:
    """What one worker runs at a time: one cell alone, or a pack of cells of one preset that
    share their batches (``sweep --pack``), all under ``root``. ``work`` holds the indices of
    its cells in the ``todo`` list."""

    work: tuple[int, ...]
    cells: tuple[Cell, ...]
    root: Path
    start: int = 0  # the round the pack's checkpoints reached

    def run(self, data_dir: str | None, progress: bool, threads: int = 0) -> list[Any]:
        """Each cell's :class:`CellResult`, or (in a pack) the error that stopped it."""
        if len(self.cells) == 1:
            cell = self.cells[0]
            return [run_cell(cell, self.root / cell.dirname, data_dir, progress, threads)]
        from diversefl.experiments.packing import Pack, run_pack

        return run_pack(Pack(self.cells, self.start), self.root, data_dir, threads)


def _units(
    todo: list[tuple[PresetRuns, int]], pack: int | str | None, data_dir: str | None
) -> list[Unit]:
    """The work in ``todo``'s order (longest first): one unit per cell, or with ``pack`` the
    cells of each preset grouped as ``sweep --pack`` groups them (a pack goes where its first
    cell was)."""
    if not pack:
        return [Unit((k,), (g.grid[i],), g.root) for k, (g, i) in enumerate(todo)]
    from diversefl.experiments.packing import plan_packs

    where = {(id(g), g.grid[i].dirname): k for k, (g, i) in enumerate(todo)}
    units: list[Unit] = []
    for g in {id(g): g for g, _ in todo}.values():  # each preset once, in order
        cells = [g.grid[i] for h, i in todo if h is g]
        for p in plan_packs(cells, g.root, pack, data_dir):
            work = tuple(where[(id(g), c.dirname)] for c in p.cells)
            units.append(Unit(work, p.cells, g.root, p.start))
    return sorted(units, key=lambda u: min(u.work))


def _run_all(
    units: list[Unit],
    data_dir: str | None,
    jobs: int,
    progress: bool,
    record: Callable[[int, CellResult], None],
) -> None:
    """Run ``units`` in this order: one after another here, or in one pool of ``jobs``
    spawned workers (each with an equal share of the threads), which take them in the order
    given; ``record`` each cell's result as its unit finishes. A packed cell whose model
    diverged does not stop its pack: its error is raised at the end."""
    errors: list[BaseException] = []

    def handle(unit: Unit, results: list[Any]) -> None:
        for k, res in zip(unit.work, results, strict=True):
            if isinstance(res, BaseException):
                errors.append(res)
            else:
                record(k, res)

    if jobs <= 1 or len(units) <= 1:
        for unit in units:
            handle(unit, unit.run(data_dir, progress))
    else:
        from concurrent.futures import as_completed

        threads = threads_per_run(jobs)
        with worker_pool(jobs) as pool:
            futures = {pool.submit(u.run, data_dir, False, threads): u for u in units}
            for fut in as_completed(futures):
                handle(futures[fut], fut.result())
    if errors:
        raise errors[0]


def _todo(
    groups: list[PresetRuns], jobs: int, refresh: bool, echo: Callable[[str], Any]
) -> list[tuple[PresetRuns, int]]:
    """The chosen cells still to run, every preset planned (and its finished cells found)
    before any runs, longest first by this machine's measured per-round times."""
    todo: list[tuple[PresetRuns, int]] = []
    for g in groups:
        g.summaries, left = _plan(g.grid, g.root, g.chosen, echo)
        todo += [(g, i) for i in left]
    if len(todo) > 1:
        per_round = measured_round_seconds(jobs, refresh, echo)

        def cost(work: tuple[PresetRuns, int]) -> float:
            return work[0].grid[work[1]].config.rounds * per_round[work[0].preset]

        todo.sort(key=cost, reverse=True)  # stable: equal costs keep the grids' order
        wall = sum(cost(w) for w in todo) / min(jobs, len(todo))
        echo(
            f"reproduce all: {len(todo)} runs to go, ~{format_duration(wall)} with --jobs "
            f"{jobs} at this machine's measured seconds per round"
        )
    return todo


def reproduce_all(
    out: str | Path | None = None,
    data_dir: str | None = None,
    rounds: int | None = None,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
    jobs: int = 1,
    device: str | None = None,
    refresh: bool = False,
    pack: int | str | None = None,
) -> AllResult:
    """Run (or finish) the runs of every MNIST figure in one pool of ``jobs`` workers, longest
    first, then draw each figure; the same run directories as ``reproduce FIGURE`` (so either
    finishes what the other started). ``refresh`` measures the per-round times anew. ``pack``
    (K or "auto") runs a preset's small-model runs in packs as ``sweep --pack`` does (equal to
    the runs alone up to float rounding, not bit for bit)."""
    started = time.monotonic()
    root = Path(out) if out is not None else DEFAULT_OUT
    groups = _preset_runs(root, rounds, device)
    todo = _todo(groups, jobs, refresh, echo)
    check_setup([g.grid[i] for g, i in todo], data_dir, keep_data=jobs <= 1 or len(todo) <= 1)
    work = [(g.grid[i], g.root / g.grid[i].dirname) for g, i in todo]
    units = _units(todo, pack, data_dir)
    ran: set[int] = set()
    finished_rounds: list[tuple[float, int]] = []

    def record(k: int, result: CellResult) -> None:
        group, i = todo[k]
        cell = group.grid[i]
        if result.summary is not None:
            group.summaries[i] = result.summary
        if result.elsewhere:
            echo(f"{group.preset}/{cell.dirname}: {result.elsewhere}, skipped")
            return
        assert result.summary is not None  # run here: it has a summary
        ran.add(k)
        finished_rounds.append((float(result.summary["wall_seconds"]), cell.config.rounds))
        pending = [w.config.rounds for j, (w, _) in enumerate(work) if j not in ran]
        left = seconds_left(finished_rounds, pending, jobs)
        pace = pace_text(len(ran), len(todo), time.monotonic() - started, left)
        echo(
            f"[{len(ran)}/{len(todo)}] {group.preset}/{cell.dirname}: acc "
            f"{result.summary['final_test_accuracy']:.4f} "
            f"({result.summary['wall_seconds']:.1f} s) | {pace}"
        )
        group.write_csv()

    if work:
        root.mkdir(parents=True, exist_ok=True)
    _run_all(units, data_dir, jobs, progress, record)
    for g in groups:
        g.refresh()
        if g.summaries:
            g.write_csv()
    paths, shares, distinct = _draw_all(groups, root, rounds, device, echo)
    result = AllResult(
        paths,
        time.monotonic() - started,
        len(ran),
        sum(len(g.chosen) for g in groups),
        sum(distinct.values()),
        shares,
    )
    for line in summary_lines(result, jobs):
        echo(line)
    return result


def _draw_all(
    groups: list[PresetRuns],
    root: Path,
    rounds: int | None,
    device: str | None,
    echo: Callable[[str], Any],
) -> tuple[list[Path], dict[str, FigureShare], dict[tuple[str, str], float]]:
    """Draw every MNIST figure from its finished runs: the paths, each figure's share, and the
    wall seconds of each distinct finished run (by preset and run directory)."""
    by_preset = {g.preset: g.finished() for g in groups}
    paths: list[Path] = []
    shares: dict[str, FigureShare] = {}
    distinct: dict[tuple[str, str], float] = {}
    for fig in mnist_figures():
        cells = figure_cells(fig, rounds, device)
        done = by_preset[fig.preset]
        paths += draw_figure(fig, cells, set(done), root, rounds, echo, again=AGAIN)
        walls = {
            c.dirname: float(done[c.dirname]["wall_seconds"]) for c in cells if c.dirname in done
        }
        shares[fig.name] = FigureShare(len(walls), sum(walls.values()))
        distinct |= {(fig.preset, name): w for name, w in walls.items()}
    return paths, shares, distinct


def summary_lines(result: AllResult, jobs: int) -> list[str]:
    """The closing summary: the wall time, then one line per figure with its runs, its
    cell-seconds and their share of all the runs' cell-seconds."""
    total = result.cell_seconds
    lines = [
        f"reproduce all: {result.runs} runs ({result.ran} run now) in "
        f"{format_duration(result.wall_seconds)} wall ({result.wall_seconds:.1f} s, --jobs "
        f"{jobs}); the runs took {total:,.1f} cell-seconds",
        f"{'figure':<8}{'runs':>6}{'cell-seconds':>15}{'share':>8}",
    ]
    for name, share in result.shares.items():
        part = share.cell_seconds / total if total > 0 else 0.0
        lines.append(f"{name:<8}{share.runs:>6}{share.cell_seconds:>15,.1f}{part:>8.0%}")
    lines.append(
        "(a figure's share is its runs' cell-seconds over all runs'; figures showing the same "
        "runs count them each: fig3 is part of fig9, fig2 and fig4 of fig10)"
    )
    return lines
