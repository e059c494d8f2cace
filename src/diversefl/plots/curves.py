"""Accuracy (or loss, TPR, ...) curves over rounds, one panel per attack: the paper's
Figs. 3-13."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diversefl.plots.figure import _output_path, _panel_grid, _pyplot
from diversefl.plots.runs import _find_runs, _read_rows, _Run, as_number
from diversefl.plots.style import (
    METRIC_NAMES,
    _key,
    aggregator_name,
    aggregator_sort_key,
    aggregator_style,
    attack_name,
    attack_sort_key,
)

# metrics whose panels keep matplotlib's own limits (not clipped to about [0, 1])
_UNBOUNDED = {"test_loss", "n_accepted"}

_Cell = tuple[str, str, str]  # (metric, attack, aggregator)


def _series(rows: list[dict[str, str]], metric: str) -> dict[int, float]:
    """round -> finite metric value of one run."""
    out: dict[int, float] = {}
    for r in rows:
        v = as_number(r.get(metric))
        rnd = as_number(r.get("round"))
        if math.isfinite(v) and math.isfinite(rnd):
            out[int(rnd)] = v
    return out


def _last_round(rows: list[dict[str, str]]) -> int:
    """The last round a run wrote a metrics row for, whatever its values."""
    rounds = [as_number(r.get("round")) for r in rows]
    return int(max((x for x in rounds if math.isfinite(x)), default=0))


@dataclass
class _Curves:
    """The runs' metrics.csv series per (metric, attack, aggregator), one per seed, with the
    last round each seed reached, and the metrics any run has a value of."""

    series: dict[_Cell, list[dict[int, float]]] = field(default_factory=lambda: defaultdict(list))
    reached: dict[_Cell, list[int]] = field(default_factory=lambda: defaultdict(list))
    available: set[str] = field(default_factory=set)


def _check_metrics(metric: str | Sequence[str]) -> list[str]:
    """``metric`` as a list of known metric names; an error naming the first unknown one."""
    metrics = [metric] if isinstance(metric, str) else list(metric)
    for m in metrics:
        if m not in METRIC_NAMES:
            raise ValueError(f"unknown metric {m!r}; choose from {', '.join(METRIC_NAMES)}")
    return metrics


def _read_curves(runs: list[_Run], metrics: list[str], path: str | Path) -> _Curves:
    """Every run's series of ``metrics``; an error naming the first metric no run has."""
    curves = _Curves()
    for run in runs:
        rows = _read_rows(run.dir / "metrics.csv")
        for m in METRIC_NAMES:
            if any(math.isfinite(as_number(r.get(m))) for r in rows):
                curves.available.add(m)
        for m in metrics:
            s = _series(rows, m)
            if s:
                curves.series[(m, run.attack, run.aggregator)].append(s)
                curves.reached[(m, run.attack, run.aggregator)].append(_last_round(rows))
    missing = [m for m in metrics if not any(k[0] == m for k in curves.series)]
    if missing:
        have = ", ".join(m for m in METRIC_NAMES if m in curves.available) or "none"
        raise ValueError(
            f"metric {missing[0]!r} not found in the runs under {path}; available: {have}"
        )
    return curves


def _draw_aggregator(
    ax: Any, agg: str, seeds: list[dict[int, float]], last: int
) -> tuple[Any, float, float]:
    """One aggregator's mean over ``seeds`` per round up to round ``last`` (every seed reached
    it), with the min-max band over several seeds; returns the line and the lowest and highest
    value drawn."""
    import numpy as np

    rounds = sorted(r for r in set().union(*seeds) if r <= last)
    vals = np.array([[s.get(r, np.nan) for s in seeds] for r in rounds], dtype=float)
    mean = np.nanmean(vals, axis=1)
    style = aggregator_style(agg)
    one = len(rounds) == 1  # one evaluation: no segment, only its marker shows it
    (line,) = ax.plot(
        rounds,
        mean,
        color=style["color"],
        linestyle=style["linestyle"],
        marker=style["marker"] or ("o" if one else None),
        markersize=4,
        markevery=None if one else 0.1,
        linewidth=1.8 if _key(agg).startswith("diversefl") else 1.3,
        label=aggregator_name(agg),
        zorder={"oracle": 4, "diversefl": 3}.get(_key(agg), 2),
    )
    if len(seeds) > 1:
        ax.fill_between(
            rounds,
            np.nanmin(vals, axis=1),
            np.nanmax(vals, axis=1),
            color=style["color"],
            alpha=0.18,
            linewidth=0,
        )
    return line, float(np.nanmin(vals)), float(np.nanmax(vals))


def _label_panel(
    ax: Any, index: int, metric: str, attack: str, metrics: list[str], n_attacks: int, ymax: float
) -> None:
    """A panel's title, axis labels and grid; a log y axis for a loss spanning over 50x."""
    import numpy as np

    label = METRIC_NAMES[metric] if len(metrics) > 1 else attack_name(attack)
    if len(metrics) > 1 and n_attacks > 1:
        label += f", {attack_name(attack)}"
    ax.set_title(f"({chr(ord('a') + index)}) {label}", fontsize=10)
    ax.set_xlabel("Iteration")
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=8)
    if metric == "test_loss" and ymax > 0:
        lows = [ln.get_ydata() for ln in ax.get_lines()]
        lo = min(float(np.nanmin(y)) for y in lows)
        if lo > 0 and ymax / lo > 50:
            ax.set_yscale("log")
    if ax.get_subplotspec().is_first_col() or len(metrics) > 1 or metric == "test_loss":
        ax.set_ylabel(METRIC_NAMES[metric])


def _set_bounded_limits(
    axes: list[Any],
    panels: list[tuple[str, str]],
    spans: list[tuple[float, float] | None],
    sharey: bool,
) -> None:
    """y limits of the bounded metrics' panels from the data of every panel that shares them
    (set panel by panel, the first panel's limits would fix a shared axis and cut off later
    panels' curves), padded as matplotlib does but not past [-0.02, 1.02] unless the data is."""
    for ax, (metric, _), span in zip(axes, panels, spans, strict=True):
        group = [s for s in (spans if sharey else [span]) if s is not None]
        if metric in _UNBOUNDED or not group:
            continue
        lo, hi = min(s[0] for s in group), max(s[1] for s in group)
        pad = 0.05 * (hi - lo) or 0.05  # matplotlib's default margin
        ax.set_ylim(min(max(lo - pad, -0.02), lo), max(min(hi + pad, 1.02), hi))


def _finish_figure(
    fig: Any, handles: dict[str, Any], n_panels: int, title: str | None, n_seeds: int
) -> None:
    """The legend of every aggregator drawn under the panels, and the title (saying how many
    seeds the curves average)."""
    ncols = min(n_panels, 3)
    fig.legend(
        list(handles.values()),
        list(handles.keys()),
        loc="outside lower center",
        ncol=min(len(handles), 6, 2 * ncols + 1),
        fontsize=9,
        frameon=False,
    )
    if title or n_seeds > 1:
        text = title or ""
        if n_seeds > 1:
            text += f"{' ' if text else ''}(mean and min-max over {n_seeds} seeds)"
        fig.suptitle(text, fontsize=11)


def plot_curves(
    path: str | Path,
    metric: str | Sequence[str] = "test_accuracy",
    out: str | Path | None = None,
    title: str | None = None,
) -> Path:
    """One panel per attack (and per metric when several are given, e.g. the backdoor's main
    and backdoor accuracy side by side), one line per aggregator (mean and min-max band over
    seeds, per round over the seeds with a value there, drawn up to the last round that every
    seed reached)."""
    metrics = _check_metrics(metric)
    runs = _find_runs(path)
    target = _output_path(path, out, f"{'-'.join(metrics)}.png")
    curves = _read_curves(runs, metrics, path)
    plt = _pyplot()
    attacks = sorted({a for _, a, _ in curves.series}, key=attack_sort_key)
    aggs = sorted({g for _, _, g in curves.series}, key=aggregator_sort_key)
    panels = [(m, a) for m in metrics for a in attacks]
    sharey = len(metrics) == 1 and metrics[0] not in _UNBOUNDED
    fig, axes = _panel_grid(plt, len(panels), sharey=sharey, min_width=min(12.0, 2.2 * len(aggs)))
    handles: dict[str, Any] = {}
    n_seeds = 1
    spans: list[tuple[float, float] | None] = []  # per panel: lowest and highest value drawn
    for i, (ax, (m, attack)) in enumerate(zip(axes, panels, strict=True)):
        ymax, ymin = 0.0, math.inf
        for agg in aggs:
            seeds = curves.series.get((m, attack, agg))
            if not seeds:
                continue
            n_seeds = max(n_seeds, len(seeds))
            # up to the last round every seed reached: a seed still running (or stopped)
            # would otherwise make the mean jump where it drops out (reached: the round
            # column, so a seed whose metric went NaN or inf does not cut the others)
            last = min(curves.reached[(m, attack, agg)])
            line, lo, hi = _draw_aggregator(ax, agg, seeds, last)
            ymax, ymin = max(ymax, hi), min(ymin, lo)
            handles.setdefault(aggregator_name(agg), line)
        spans.append((ymin, ymax) if math.isfinite(ymin) else None)
        _label_panel(ax, i, m, attack, metrics, len(attacks), ymax)
    _set_bounded_limits(axes, panels, spans, sharey)
    _finish_figure(fig, handles, len(panels), title, n_seeds)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
