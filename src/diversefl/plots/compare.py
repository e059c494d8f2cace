"""Several run directories in one figure: a metric against the round, one line per run,
labelled by the run's folder, aggregator and attack, so comparing two runs needs no copying
them into one sweep folder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from diversefl.plots.curves import _check_metrics, _series
from diversefl.plots.figure import _output_path, _pyplot
from diversefl.plots.runs import _load_run, _read_rows
from diversefl.plots.style import ATTACK_SHORT, METRIC_NAMES, aggregator_name


@dataclass(frozen=True)
class RunSeries:
    """One run's line: its legend label and the metric per evaluated round."""

    label: str
    rounds: list[int]
    values: list[float]


def compare_series(paths: Sequence[str | Path], metric: str = "test_accuracy") -> list[RunSeries]:
    """Each run directory's ``metric`` per round (its metrics.csv), labelled ``folder
    (Aggregator, Attack)``, with the seed when the runs' seeds differ and the path given when
    two folders share a name; an error names a path that is no run directory or lacks the
    metric."""
    (metric,) = _check_metrics(metric)
    dirs = [Path(p) for p in paths]
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: no such directory")
        if not (d / "metrics.csv").is_file():
            raise ValueError(
                f"{d} is not a run directory (no metrics.csv): plot of several paths compares "
                "run directories (a sweep's folder is plotted on its own)"
            )
    seen = [d.resolve() for d in dirs]
    twice = next((d for d, r in zip(dirs, seen, strict=True) if seen.count(r) > 1), None)
    if twice is not None:
        raise ValueError(f"{twice} is given twice")
    runs = [_load_run(d) for d in dirs]
    names = [d.name for d in dirs]
    seeds = {run.seed for run in runs}
    out = []
    for d, run, name in zip(dirs, runs, names, strict=True):
        shown = name if names.count(name) == 1 else str(d)
        label = f"{shown} ({aggregator_name(run.aggregator)}, "
        label += ATTACK_SHORT.get(run.attack, run.attack)
        label += f", seed {run.seed})" if len(seeds) > 1 else ")"
        series = _series(_read_rows(d / "metrics.csv"), metric)
        if not series:
            raise ValueError(f"metric {metric!r} not found in {d / 'metrics.csv'}")
        rounds = sorted(series)
        out.append(RunSeries(label, rounds, [series[r] for r in rounds]))
    return out


def plot_runs(
    paths: Sequence[str | Path],
    metric: str = "test_accuracy",
    out: str | Path | None = None,
    title: str | None = None,
) -> Path:
    """Draw :func:`compare_series` of the run directories ``paths`` in one panel and write it
    to ``out`` (default ``compare-<metric>.png`` in the current directory)."""
    lines = compare_series(paths, metric)
    target = _output_path(Path.cwd(), out, f"compare-{metric}.png")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.4), layout="constrained")
    for line in lines:
        one = len(line.rounds) == 1  # one evaluation: only its marker shows it
        ax.plot(line.rounds, line.values, marker="o" if one else None, label=line.label)
    ax.set_xlabel("Iteration")
    ax.set_ylabel(METRIC_NAMES[metric])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title, fontsize=11)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
