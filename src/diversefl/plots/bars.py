"""Bar chart of several final metrics per aggregator (e.g. main and backdoor accuracy of a
backdoor board)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from diversefl.plots.figure import _output_path, _pyplot
from diversefl.plots.runs import as_number, table_rows
from diversefl.plots.style import aggregator_name, aggregator_sort_key


def metric_bars(
    rows: list[dict[str, Any]], metrics: list[str]
) -> dict[str, dict[str, list[float]]]:
    """Per aggregator (in display order), per metric: the values of its runs that have it
    (one per seed and attack), e.g. main and backdoor accuracy of a backdoor board."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: {m: [] for m in metrics})
    for r in rows:
        for m in metrics:
            v = as_number(r.get(m))
            if math.isfinite(v):
                values[str(r["aggregator"])][m].append(v)
    missing = [m for m in metrics if not any(v[m] for v in values.values())]
    if missing:
        have = sorted(
            k for k in (rows[0] if rows else {})
            if any(math.isfinite(as_number(r.get(k))) for r in rows) and k != "seed"
        )  # fmt: skip
        raise ValueError(
            f"metric(s) {', '.join(map(repr, missing))} not found in the results; "
            f"numeric columns: {', '.join(have) or 'none'}"
        )
    return {a: values[a] for a in sorted(values, key=aggregator_sort_key)}


def plot_metric_bars(
    path: str | Path,
    metrics: list[str],
    out: str | Path | None = None,
    seeds: list[int] | None = None,
) -> Path:
    """Horizontal bars, one group per aggregator and one bar per metric (mean over its runs,
    or over ``seeds``' runs; whisker = sample std when there are several). For a backdoor
    board, main accuracy next to backdoor accuracy shows which defenses stop the backdoor and
    what the main task pays."""
    p = Path(path)
    try:
        bars = metric_bars(table_rows(p, seeds), metrics)
    except ValueError as e:
        raise ValueError(f"{e} under {p}") from None
    plt = _pyplot()
    aggs = list(bars)
    height = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(8.0, 0.42 * len(aggs) * max(1, len(metrics) / 2) + 1.4))
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    stats = {
        m: (
            [statistics.fmean(bars[a][m]) if bars[a][m] else math.nan for a in aggs],
            [statistics.stdev(bars[a][m]) if len(bars[a][m]) > 1 else 0.0 for a in aggs],
        )
        for m in metrics
    }
    # x range: 0 to 1.12 (room for a label right of a bar at 1.0) unless a whisker or a
    # metric above 1 (or below 0) needs more
    ends = [(v - sd, v + sd) for means, stds in stats.values()
            for v, sd in zip(means, stds, strict=True) if math.isfinite(v)]  # fmt: skip
    left, right = min(0.0, *(e[0] for e in ends)), max(1.0, *(e[1] for e in ends))
    scale = right - left
    for k, m in enumerate(metrics):
        means, stds = stats[m]
        ys = [i - 0.4 + height * (k + 0.5) for i in range(len(aggs))]
        name = m.removeprefix("final_").replace("_", " ")
        ax.barh(ys, means, height=height, xerr=stds if any(stds) else None, capsize=2,
                color=colours[k % len(colours)], label=name)  # fmt: skip
        for y, v, sd in zip(ys, means, stds, strict=True):
            if math.isfinite(v):  # right of the whisker, inside the axes
                ax.text(v + sd + 0.01 * scale, y, f"{v:.3f}", va="center", fontsize=7)
    ax.set_yticks(range(len(aggs)), [aggregator_name(a) for a in aggs])
    ax.invert_yaxis()
    if (left, right) == (0.0, 1.0):
        ax.set_xlim(0.0, 1.12)
        ax.set_xticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    else:
        ax.set_xlim(left - (0.02 * scale if left < 0 else 0.0), right + 0.12 * scale)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    runs = max(len(v) for b in bars.values() for v in b.values())
    ax.set_title("one run per bar" if runs == 1 else
                 f"mean over up to {runs} runs per bar (whisker: std)")  # fmt: skip
    target = _output_path(p if p.is_dir() else p.parent, out, "bars.png")
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
