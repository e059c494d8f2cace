"""Where a sweep stands without running anything: per cell done / started / to do, a
defense x seed matrix of finished runs, and the time left at the pace of the finished runs.

It only reads the run directories (``summary.json``, the lock file, the last row of
``metrics.csv``), so it is safe to call while sweeps are running in other processes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diversefl.cell_lock import holder
from diversefl.experiments.sweep import (
    Cell,
    finished_summary,
    format_duration,
    last_metrics_round,
)


@dataclass(frozen=True)
class CellProgress:
    """One cell's state: ``done`` (finished run), ``running`` (a process holds its lock),
    ``interrupted`` (a run directory without a finished summary and nobody running it: the
    next sweep resumes it from its checkpoint, or starts it again when it has none) or
    ``todo`` (no directory)."""

    cell: Cell
    state: str
    rounds: int  # rounds with saved metrics (all of them when done)
    wall_seconds: float  # the finished run's wall time; 0 otherwise
    holder: str | None = None  # who runs it ("pid 123 on host") when running
    checkpointed: bool = True  # False: an interrupted run without checkpoint.pt, run again

    @property
    def fraction_left(self) -> float:
        """Share of this cell's rounds still to run."""
        if self.state == "done":
            return 0.0
        if self.state == "interrupted" and not self.checkpointed:
            return 1.0  # nothing to resume from: it starts again from round 0
        return max(0.0, 1.0 - self.rounds / self.cell.config.rounds)


def cell_progress(cell: Cell, run_dir: Path) -> CellProgress:
    """The state of ``cell`` in ``run_dir``; a finished run with another config is an error,
    as it is for ``diversefl sweep``."""
    summary = finished_summary(cell, run_dir)
    if summary is not None:
        return CellProgress(cell, "done", cell.config.rounds, float(summary["wall_seconds"]))
    if run_dir.is_dir():
        who = holder(run_dir)
        state = "interrupted" if who is None else "running"
        rounds = last_metrics_round(run_dir / "metrics.csv")
        return CellProgress(
            cell, state, rounds, 0.0, who, checkpointed=(run_dir / "checkpoint.pt").exists()
        )
    return CellProgress(cell, "todo", 0, 0.0)


def sweep_progress(cells: list[Cell], out: str | Path) -> list[CellProgress]:
    """:func:`cell_progress` of every cell, in grid order."""
    return [cell_progress(c, Path(out) / c.dirname) for c in cells]


def done_matrix(progress: list[CellProgress]) -> tuple[list[str], list[int], dict]:
    """Defenses (grid order), seeds (sorted) and ``{(defense, seed): (done, started, cells)}``
    (started: running or interrupted)."""
    aggs = list(dict.fromkeys(p.cell.aggregator for p in progress))
    seeds = sorted({p.cell.seed for p in progress})
    counts: dict[tuple[str, int], tuple[int, int, int]] = {}
    for p in progress:
        key = (p.cell.aggregator, p.cell.seed)
        done, started, total = counts.get(key, (0, 0, 0))
        is_started = p.state in ("running", "interrupted")
        counts[key] = (done + (p.state == "done"), started + is_started, total + 1)
    return aggs, seeds, counts


def time_left(progress: list[CellProgress], jobs: int = 1) -> tuple[float, float | None]:
    """Runs' worth of work left (started runs count by their rounds left) and the wall
    seconds that takes with ``jobs`` at once (None when no run has finished).

    Each unfinished cell is timed at the mean wall time of its own defense's finished runs
    (a Bulyan run costs about twice a mean run), or of all finished runs when its defense has
    none yet.
    """
    left = sum(p.fraction_left for p in progress)
    walls: dict[str, list[float]] = {}
    for p in progress:
        if p.state == "done":
            walls.setdefault(p.cell.aggregator, []).append(p.wall_seconds)
    if not walls:
        return left, None
    every = [w for ws in walls.values() for w in ws]
    overall = sum(every) / len(every)
    pace = {agg: sum(ws) / len(ws) for agg, ws in walls.items()}
    seconds = sum(p.fraction_left * pace.get(p.cell.aggregator, overall) for p in progress)
    return left, seconds / max(1, jobs)


def summary_lines(progress: list[CellProgress], jobs: int = 1) -> list[str]:
    """The plain-text lines under the matrix: totals, started runs, time left."""
    n = len(progress)
    by_state = {
        k: [p for p in progress if p.state == k] for k in ("done", "running", "interrupted")
    }
    done = by_state["done"]
    lines = [
        f"{len(done)} of {n} runs done, {len(by_state['running'])} running, "
        f"{len(by_state['interrupted'])} interrupted, "
        f"{n - sum(map(len, by_state.values()))} not started"
    ]
    if done:
        wall = sum(p.wall_seconds for p in done)
        lines.append(
            f"finished runs: {wall:,.0f} s summed ({format_duration(wall)}), "
            f"mean {wall / len(done):.0f} s per run"
        )
    for p in by_state["running"]:
        lines.append(
            f"running: {p.cell.dirname} at round {p.rounds}/{p.cell.config.rounds} ({p.holder})"
        )
    for p in by_state["interrupted"]:
        lines.append(
            f"interrupted: {p.cell.dirname} at round {p.rounds}/{p.cell.config.rounds} "
            + (
                "(the next sweep resumes it from its last checkpoint)"
                if p.checkpointed
                else "(started but never checkpointed: the next sweep starts it from round 0)"
            )
        )
    left, seconds = time_left(progress, jobs)
    if left == 0:
        lines.append("nothing left to run")
    elif seconds is None:
        lines.append(f"{left:.1f} runs' worth left; no finished run yet to time them by")
    else:
        lines.append(
            f"{left:.1f} runs' worth left: ~{format_duration(seconds)} with --jobs {jobs} "
            "at the pace of each defense's finished runs (all finished runs' for a defense "
            "with none; their wall times include whatever shared the CPU)"
        )
        in_progress = len(by_state["running"])
        if in_progress and in_progress != jobs:
            _, now = time_left(progress, in_progress)
            lines.append(
                f"at the {in_progress} runs in progress now (other sweep processes on this "
                f"directory included): ~{format_duration(now or 0.0)}"
            )
    return lines
