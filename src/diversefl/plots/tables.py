"""Markdown tables of final results per aggregator x attack (mean ± std over seeds, worst
attack, TPR/FPR), with the cells an attack-invariant aggregator shares."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diversefl.plots.runs import as_number, table_rows
from diversefl.plots.style import (
    ATTACK_SHORT,
    _key,
    aggregator_name,
    aggregator_sort_key,
    attack_sort_key,
    lower_is_better,
)


def seed_label(rows: list[dict[str, Any]]) -> str:
    """Which seeds a figure averages, for its title: 'seed 0', 'mean over seeds 0, 1, 2'."""
    present = sorted({int(v) for r in rows if math.isfinite(v := as_number(r.get("seed")))})
    if len(present) == 1:
        return f"seed {present[0]}"
    if not present:
        return "mean over runs"
    return f"mean over seeds {', '.join(map(str, present))}"


def format_mean_std(values: list[float]) -> str:
    """'0.884' for one value, '0.884 ± 0.004' (sample std) for several, '–' for none."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def attack_summary(
    per_attack: dict[str, list[float]], attacks: list[str], lower_better: bool = False
) -> list[str]:
    """The two ranking cells of a table row: the worst per-attack mean (the lowest, or the
    highest with ``lower_better``; with the attack that caused it, or how many tie with it as
    printed) and the mean of the per-attack means; blank unless every attack has a value, so a
    half-run row is not ranked on the attacks it happened to face."""
    means = {t: statistics.fmean(v) for t, v in per_attack.items() if v}
    if any(t not in means for t in attacks):
        return ["", ""]
    return [worst_attack(means, attacks, lower_better), f"{statistics.fmean(means.values()):.3f}"]


def worst_attack(values: dict[str, float], attacks: list[str], lower_better: bool = False) -> str:
    """'0.098 (Adaptive)': the worst of ``values`` over ``attacks`` (the lowest, or the
    highest where ``lower_better``) and the attack that gave it, or how many attacks tie with
    it as printed ('2 tied', 'all')."""
    pick = max if lower_better else min
    worst = pick(attacks, key=lambda t: values[t])
    shown = f"{values[worst]:.3f}"
    tied = [t for t in attacks if f"{values[t]:.3f}" == shown]  # equal as printed
    if len(tied) == len(attacks):
        label = "all"
    elif len(tied) > 1:
        label = f"{len(tied)} tied"
    else:
        label = ATTACK_SHORT.get(worst, worst.replace("_", " "))
    return f"{shown} ({label})"


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def machine_note(rows: list[dict[str, Any]]) -> str:
    """'Measured on: CPU A (n runs), CPU B (m runs)' from the runs' recorded CPU (sweep.csv's
    ``cpu`` column or summary.json's ``machine``); float rounding differs between CPUs, so a
    table assembled on several machines says so. Empty when no run records one."""
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        machine = r.get("machine")
        cpu = r.get("cpu") or (machine.get("cpu") if isinstance(machine, dict) else None)
        counts[str(cpu) if cpu else ""] += 1
    if not any(counts):
        return ""

    def runs(k: int) -> str:
        return f"{k} run" if k == 1 else f"{k} runs"

    parts = [f"{cpu} ({runs(k)})" for cpu, k in sorted(counts.items()) if cpu]
    if counts.get(""):
        parts.append(f"not recorded ({runs(counts[''])})")
    return "Measured on: " + ", ".join(parts) + "."


# Aggregators whose run no attack changes (``Aggregator.attack_invariant``; OracleSGD averages
# the honest clients only): a grid runs them under one attack, and the tables show that run
# for the attacks they were not run under. Kept here as names so that plotting needs no torch;
# tests/test_plots.py checks it against the registry.
ATTACK_INVARIANT = frozenset({"oracle"})


def invariant_labels(rows: list[dict[str, Any]]) -> set[str]:
    """The aggregator labels of ``rows`` whose rule is attack-invariant. Where a label's runs
    record their rule (``rule``, from each run's config.toml) every recorded rule must be
    such a rule, so an entry with any label ("ideal") is recognised by its runs; the label
    itself ("oracle") decides only for labels none of whose runs records a rule."""
    rules: dict[str, set[str]] = {}
    for r in rows:
        label = str(r["aggregator"])
        rules.setdefault(label, set())
        if r.get("rule"):
            rules[label].add(_key(str(r["rule"])))
    return {
        label
        for label, recorded in rules.items()
        if (recorded <= ATTACK_INVARIANT if recorded else _key(label) in ATTACK_INVARIANT)
    }


def invariant_fills(
    present: set[tuple[str, str]],
    aggs: list[str],
    attacks: list[str],
    invariant: set[str] | None = None,
) -> dict[tuple[str, str], str]:
    """``{(aggregator, attack): attack whose run stands for it}`` for the attacked cells an
    attack-invariant aggregator (``invariant``, from :func:`invariant_labels`; by default
    the labels that name such a rule) was not run under (its first attacked run, in column
    order)."""
    if invariant is None:
        invariant = {a for a in aggs if _key(a) in ATTACK_INVARIANT}
    fills: dict[tuple[str, str], str] = {}
    for a in aggs:
        if a not in invariant:
            continue
        ran = [t for t in attacks if t != "none" and (a, t) in present]
        if not ran:
            continue
        for t in attacks:
            if t != "none" and (a, t) not in present:
                fills[(a, t)] = ran[0]
    return fills


def fill_invariant(
    cells: dict, aggs: list[str], attacks: list[str], invariant: set[str] | None = None
) -> dict[tuple[str, str], str]:
    """Give ``cells`` (keyed by ``(aggregator, attack)``) the :func:`invariant_fills` entries,
    each the value of its source run; returns the fills."""
    fills = invariant_fills(set(cells), aggs, attacks, invariant)
    for cell, source in fills.items():
        cells[cell] = cells[(cell[0], source)]
    return fills


@dataclass(frozen=True)
class _Grid:
    """The cells of a table: per (aggregator, attack), the runs' values of ``metric``,
    ``mean_tpr`` and ``mean_fpr``; the rows and columns in display order; the cells an
    attack-invariant aggregator shares (cell -> attack of the run shown) and the number of
    seeds of the fullest cell."""

    metric: str
    cells: dict[tuple[str, str], dict[str, list[float]]]
    aggs: list[str]
    attacks: list[str]
    fills: dict[tuple[str, str], str]
    n_seeds: int

    @property
    def attacked(self) -> list[str]:
        """The columns of an attack (all but "none")."""
        return [t for t in self.attacks if t != "none"]

    @property
    def columns(self) -> list[str]:
        """The attack columns' headers."""
        return [ATTACK_SHORT.get(t, t.replace("_", " ")) for t in self.attacks]

    def short(self, values: list[float]) -> bool:
        """Whether a cell has fewer seeds than the fullest cell (but some)."""
        return 0 < len(values) < self.n_seeds


def _table_rows(p: Path, metric: str, seeds: list[int] | None) -> list[dict[str, Any]]:
    """The result rows under ``p`` (of ``seeds``); an error when ``p`` does not exist or no
    row has a finite ``metric`` (naming the numeric columns there are)."""
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    rows = table_rows(p, seeds)
    if not any(math.isfinite(as_number(r.get(metric))) for r in rows):
        numeric = sorted(
            {k for r in rows for k, v in r.items() if k not in ("seed",)
             and not isinstance(v, (list, dict)) and math.isfinite(as_number(v))}
        )  # fmt: skip
        raise ValueError(
            f"metric {metric!r} not found in the results under {p}; available: "
            + ", ".join(numeric)
        )
    return rows


def _grid(rows: list[dict[str, Any]], metric: str) -> _Grid:
    """Group the rows with a finite ``metric`` into cells (a run without it is no cell, as on
    the heat-map) and fill the attack-invariant aggregators' missing cells."""
    cells: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if not math.isfinite(as_number(r.get(metric))):
            continue
        c = cells[(str(r["aggregator"]), str(r["attack"]))]
        for k in (metric, "mean_tpr", "mean_fpr"):
            v = as_number(r.get(k))
            if math.isfinite(v):
                c[k].append(v)
    aggs = sorted({a for a, _ in cells}, key=aggregator_sort_key)
    attacks = sorted({t for _, t in cells}, key=attack_sort_key)
    fills = fill_invariant(cells, aggs, attacks, invariant_labels(rows))
    n_seeds = max(len(c[metric]) for c in cells.values())
    return _Grid(metric, cells, aggs, attacks, fills, n_seeds)


def _metric_cell(grid: _Grid, a: str, t: str) -> str:
    """'0.884 ± 0.004 (n=2) (=)': a cell's mean ± std, its seed count when short, and the
    mark of a shared run; blank without a run."""
    if (a, t) not in grid.cells:
        return ""
    values = grid.cells[(a, t)][grid.metric]
    text = format_mean_std(values) + (f" (n={len(values)})" if grid.short(values) else "")
    return text + (" (=)" if (a, t) in grid.fills else "")


def _metric_body(grid: _Grid) -> tuple[list[str], list[list[str]], bool]:
    """The header and rows of the metric table, with the worst-attack and mean-under-attack
    columns when there are two attacks or more (starred where a row's cells have different
    numbers of seeds); and whether any row is starred."""
    body = [[aggregator_name(a)] + [_metric_cell(grid, a, t) for t in grid.attacks]
            for a in grid.aggs]  # fmt: skip
    header = ["Aggregator", *grid.columns]
    mixed = False
    if len(grid.attacked) >= 2:
        header += ["Worst attack", "Mean under attack"]
        for a, row in zip(grid.aggs, body, strict=True):
            per_attack = {
                t: grid.cells[(a, t)][grid.metric] for t in grid.attacked if (a, t) in grid.cells
            }
            ranks = attack_summary(per_attack, grid.attacked, lower_is_better(grid.metric))
            if ranks[0] and len({len(v) for v in per_attack.values()}) > 1:
                ranks = [f"{r} *" for r in ranks]
                mixed = True
            row += ranks
    return header, body, mixed


def _metric_title(grid: _Grid) -> str:
    """The bold line over the metric table."""
    note = f"{grid.metric} (mean ± std over seeds)" if grid.n_seeds > 1 else grid.metric
    if lower_is_better(grid.metric) and len(grid.attacked) >= 2:
        note += "; lower is better, so the worst attack is the highest value"
    return f"**{note}**\n\n"


def _footnotes(grid: _Grid, mixed: bool) -> str:
    """The paragraphs under the metric table explaining its (=), blank, (n=k) and * cells,
    each only where the table has such a cell."""
    text = ""
    if grid.fills:
        sources = sorted({(a, src) for (a, _), src in grid.fills.items()})
        text += (
            "\n\n(=): "
            + "; ".join(
                f"{aggregator_name(a)} never reads a Byzantine update, so every attack gives it "
                f"the same run; it was run under {ATTACK_SHORT.get(src, src)}, shown for the others"
                for a, src in sources
            )
            + "."
        )
    if any((a, t) not in grid.cells for a in grid.aggs for t in grid.attacks):
        text += (
            "\n\nBlank: no run of that pair (a sweep entry limited to some attacks, such as "
            "OracleSGD's in the leaderboards, or a grid still running)."
        )
    if any(grid.short(c[grid.metric]) for c in grid.cells.values()):
        text += (
            f"\n\n(n=k): mean over k seeds, where the fullest cells have {grid.n_seeds}."
            + (" \\*: worst and mean over cells with different numbers of seeds." if mixed else "")
            + " `--seeds` limits the table to the seeds every cell has."
        )
    return text


def _detection_table(grid: _Grid) -> str:
    """The mean TPR / FPR table of the aggregators that rejected any client in any run;
    empty when none did."""

    def rejects(a: str) -> bool:
        vals = [v for (g, _), c in grid.cells.items() if g == a for k in ("mean_tpr", "mean_fpr")
                for v in c[k]]  # fmt: skip
        return any(v > 0 for v in vals)

    rejecting = [a for a in grid.aggs if rejects(a)]
    if not rejecting:
        return ""
    det = []
    for a in rejecting:
        row = [aggregator_name(a)]
        for t in grid.attacks:
            c = grid.cells.get((a, t))
            if c is None:
                row.append("")
                continue
            tpr = f"{statistics.fmean(c['mean_tpr']):.3f}" if c["mean_tpr"] else "–"
            fpr = f"{statistics.fmean(c['mean_fpr']):.3f}" if c["mean_fpr"] else "–"
            row.append(f"{tpr} / {fpr}" + (" (=)" if (a, t) in grid.fills else ""))
        det.append(row)
    return "\n\n**mean TPR / FPR (Byzantine rejected / honest rejected)**\n\n" + markdown_table(
        ["Aggregator", *grid.columns], det
    )


def accuracy_table(
    path: str | Path, metric: str = "final_test_accuracy", seeds: list[int] | None = None
) -> str:
    """Markdown tables: ``metric`` per aggregator x attack (mean ± std), then mean TPR/FPR.

    With ``seeds``, only those seeds' runs count. A cell with fewer seeds than the table's
    fullest cell says so (``(n=1)``), and a ranking taken over cells with different numbers
    of seeds is starred: while a multi-seed grid is still running, its rows are not yet
    comparable, and ``seeds`` restricts the table to the seeds every cell has."""
    rows = _table_rows(Path(path), metric, seeds)
    grid = _grid(rows, metric)
    header, body, mixed = _metric_body(grid)
    text = _metric_title(grid) + markdown_table(header, body)
    text += _footnotes(grid, mixed)
    text += _detection_table(grid)
    machines = machine_note(rows)
    return text + (f"\n\n{machines}" if machines else "") + "\n"
