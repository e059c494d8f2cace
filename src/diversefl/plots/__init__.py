"""Figures and tables from run and sweep directories: accuracy curves per attack (the paper's
Figs. 3-13), DiverseFL's C1 x C2 scatter (Fig. 2) and markdown tables of final accuracy.
Only reads files; matplotlib is imported lazily with the Agg backend."""

from diversefl.plots.bars import metric_bars, plot_metric_bars
from diversefl.plots.c1c2 import plot_c1c2
from diversefl.plots.compare import RunSeries, compare_series, plot_runs
from diversefl.plots.cosines import plot_cosines
from diversefl.plots.curves import plot_curves
from diversefl.plots.heatmap import heatmap_grid, plot_heatmap
from diversefl.plots.runs import as_number, table_rows
from diversefl.plots.style import (
    ATTACK_NAMES,
    ATTACK_ORDER,
    ATTACK_SHORT,
    METRIC_NAMES,
    aggregator_name,
    aggregator_sort_key,
    aggregator_style,
    attack_name,
    attack_sort_key,
    lower_is_better,
)
from diversefl.plots.tables import (
    ATTACK_INVARIANT,
    accuracy_table,
    attack_summary,
    fill_invariant,
    format_mean_std,
    invariant_fills,
    invariant_labels,
    machine_note,
    markdown_table,
    seed_label,
    worst_attack,
)

__all__ = [
    "ATTACK_INVARIANT",
    "ATTACK_NAMES",
    "ATTACK_ORDER",
    "ATTACK_SHORT",
    "METRIC_NAMES",
    "RunSeries",
    "accuracy_table",
    "aggregator_name",
    "aggregator_sort_key",
    "aggregator_style",
    "as_number",
    "attack_name",
    "attack_sort_key",
    "attack_summary",
    "compare_series",
    "fill_invariant",
    "format_mean_std",
    "heatmap_grid",
    "invariant_fills",
    "invariant_labels",
    "lower_is_better",
    "machine_note",
    "markdown_table",
    "metric_bars",
    "plot_c1c2",
    "plot_cosines",
    "plot_curves",
    "plot_heatmap",
    "plot_metric_bars",
    "plot_runs",
    "seed_label",
    "table_rows",
    "worst_attack",
]
