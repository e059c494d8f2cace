"""Heat-map of a final metric, aggregators x attacks, with each row's worst attack set
apart."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from diversefl.plots.figure import _output_path, _pyplot
from diversefl.plots.runs import as_number, table_rows
from diversefl.plots.style import (
    ATTACK_SHORT,
    aggregator_name,
    aggregator_sort_key,
    attack_sort_key,
    lower_is_better,
)
from diversefl.plots.tables import fill_invariant, invariant_fills, invariant_labels, seed_label


def heatmap_grid(
    rows: list[dict[str, Any]], metric: str = "final_test_accuracy"
) -> tuple[list[str], list[str], list[list[float]]]:
    """Rows (aggregator labels), columns (attack labels, then ``"worst"`` when two or more
    attacks other than ``none`` are present) and the ``metric`` means over seeds (NaN where a
    cell has no run; an attack-invariant aggregator's attacked cells all show its attacked
    run, :func:`invariant_fills`; the worst column, the lowest value or the highest where
    :func:`lower_is_better`, is NaN until the row has faced every attack)."""
    cells: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        v = as_number(r.get(metric))
        if math.isfinite(v):
            cells[(str(r["aggregator"]), str(r["attack"]))].append(v)
    if not cells:
        raise ValueError(f"metric {metric!r} not found in the results")
    aggs = sorted({a for a, _ in cells}, key=aggregator_sort_key)
    attacks = sorted({t for _, t in cells}, key=attack_sort_key)
    fill_invariant(cells, aggs, attacks, invariant_labels(rows))
    grid = [[statistics.fmean(cells[(a, t)]) if (a, t) in cells else math.nan for t in attacks]
            for a in aggs]  # fmt: skip
    attacked = [j for j, t in enumerate(attacks) if t != "none"]
    if len(attacked) < 2:
        return aggs, attacks, grid
    pick = max if lower_is_better(metric) else min
    for row in grid:
        values = [row[j] for j in attacked]
        row.append(pick(values) if all(math.isfinite(v) for v in values) else math.nan)
    return aggs, [*attacks, "worst"], grid


def plot_heatmap(
    path: str | Path,
    metric: str = "final_test_accuracy",
    out: str | Path | None = None,
    seeds: list[int] | None = None,
) -> Path:
    """Heat-map of ``metric`` (mean over seeds, or over ``seeds`` only) with aggregators as
    rows, attacks as columns, and each row's worst attack as a last column set apart (a
    defense is as good as its worst case). A cell with fewer seeds than the fullest says
    ``n=k`` under its value, as the table's ``(n=k)``."""
    p = Path(path)
    rows = table_rows(p, seeds)
    try:
        aggs, attacks, grid = heatmap_grid(rows, metric)
    except ValueError as e:
        raise ValueError(f"{e} under {p}") from None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.1 * len(attacks) + 3.0, 0.45 * len(aggs) + 1.6))
    finite = [v for row in grid for v in row if math.isfinite(v)]
    # rates and accuracies on the fixed 0-1 scale (figures comparable); other metrics (a loss,
    # seconds) on their own range
    lo, hi = (0.0, 1.0) if all(0.0 <= v <= 1.0 for v in finite) else (min(finite), max(finite))
    hi = hi if hi > lo else lo + 1.0
    # the same colour means the same verdict on every metric: bright is good, dark is bad
    cmap = "viridis_r" if lower_is_better(metric) else "viridis"
    im = ax.imshow(grid, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
    names = {**ATTACK_SHORT, "worst": "Worst attack"}
    ax.set_xticks(range(len(attacks)), [names.get(t, t) for t in attacks], rotation=30,
                  ha="right")  # fmt: skip
    if attacks[-1] == "worst":
        ax.axvline(len(attacks) - 1.5, color="white", linewidth=4)
    ax.set_yticks(range(len(aggs)), [aggregator_name(a) for a in aggs])
    counts: dict[tuple[str, str], int] = defaultdict(int)  # runs (seeds) per cell
    for r in rows:
        if math.isfinite(as_number(r.get(metric))):
            counts[(str(r["aggregator"]), str(r["attack"]))] += 1
    fills = invariant_fills(
        set(counts), aggs, [t for t in attacks if t != "worst"], invariant_labels(rows)
    )
    for cell, source in fills.items():
        counts[cell] = counts[(cell[0], source)]
    fullest = max(counts.values())

    def dark(v: float) -> bool:  # text on the dark end of the colour map is white
        share = (v - lo) / (hi - lo)
        return (1.0 - share if lower_is_better(metric) else share) < 0.6

    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if math.isfinite(v):
                k = counts.get((aggs[i], attacks[j]), fullest)  # "worst": no count of its own
                filled = (aggs[i], attacks[j]) in fills
                ax.text(j, i, f"{v:.3f}" + (f"\nn={k}" if k < fullest else ""), ha="center",
                        va="center", fontsize=8 if k == fullest else 7,
                        color="white" if dark(v) else "black",
                        fontstyle="italic" if filled else "normal")  # fmt: skip
    if fills:
        names_filled = sorted({aggregator_name(a) for a, _ in fills})
        fig.text(0.01, 0.01, f"italic: {', '.join(names_filled)} never reads a Byzantine "
                 "update; its one attacked run stands for every attack", fontsize=7)  # fmt: skip
    fig.colorbar(im, ax=ax, label=metric.replace("_", " "))
    uneven = any(k < fullest for k in counts.values())
    ax.set_title(f"{metric.replace('_', ' ')} ({seed_label(rows)}"
                 + (f"; n=k: a cell of k of {fullest} seeds" if uneven else "") + ")")  # fmt: skip
    target = _output_path(p if p.is_dir() else p.parent, out, f"{metric}_heatmap.png")
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
