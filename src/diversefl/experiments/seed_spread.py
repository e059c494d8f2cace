"""How far one seed's results are from the mean over all seeds, per defense: whether a grid
run with one seed can be trusted to rank the defenses (``diversefl plot DIR --seed-spread``)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from diversefl.plots import (
    ATTACK_SHORT,
    aggregator_name,
    aggregator_sort_key,
    as_number,
    attack_sort_key,
    fill_invariant,
    invariant_labels,
    lower_is_better,
    markdown_table,
    table_rows,
    worst_attack,
)


def _attack(label: str) -> str:
    return ATTACK_SHORT.get(label, label.replace("_", " "))


def seed_spread_table(
    path: str | Path, metric: str = "final_test_accuracy", seed: int | None = None
) -> str:
    """Markdown table: for every defense whose cells all have the grid's full number of seeds,
    its worst attack and mean under attack from ``seed`` alone (default: the lowest seed) and
    from the mean over seeds, the largest sample std of a cell, and the largest distance of a
    cell's ``seed`` value from its mean over seeds."""
    rows = table_rows(Path(path))
    cells: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for r in rows:
        v, s = as_number(r.get(metric)), as_number(r.get("seed"))
        if math.isfinite(v) and math.isfinite(s):
            cells[(str(r["aggregator"]), str(r["attack"]))][int(s)] = v
    if not cells:
        raise ValueError(f"no run under {path} has a finite {metric!r}")
    seeds = sorted({s for c in cells.values() for s in c})
    if len(seeds) < 2:
        raise ValueError(f"--seed-spread needs runs of at least two seeds under {path}")
    ref = seeds[0] if seed is None else seed
    if ref not in seeds:
        raise ValueError(f"seed {ref} has no runs under {path} (seeds: {seeds})")
    aggs = sorted({a for a, _ in cells}, key=aggregator_sort_key)
    attacks = sorted({t for _, t in cells}, key=attack_sort_key)
    fill_invariant(cells, aggs, attacks, invariant_labels(rows))  # one run stands for all
    attacked = [t for t in attacks if t != "none"] or attacks
    body, unfinished, limited = [], [], []
    for a in aggs:
        ran = [t for t in attacks if (a, t) in cells]
        if not all(len(cells[(a, t)]) == len(seeds) for t in ran):
            unfinished.append(aggregator_name(a))
            continue
        if len(ran) < len(attacks):  # a grid entry limited to some attacks
            limited.append(aggregator_name(a))
            continue
        one = {t: cells[(a, t)][ref] for t in attacks}
        mean = {t: statistics.fmean(cells[(a, t)].values()) for t in attacks}
        std = {t: statistics.stdev(cells[(a, t)].values()) for t in attacks}
        widest = max(attacks, key=lambda t: std[t])
        moved = max(attacks, key=lambda t: abs(one[t] - mean[t]))
        body.append(
            [
                aggregator_name(a),
                worst_attack(one, attacked, lower_is_better(metric)),
                worst_attack(mean, attacked, lower_is_better(metric)),
                f"{statistics.fmean(one[t] for t in attacked):.3f}",
                f"{statistics.fmean(mean[t] for t in attacked):.3f}",
                f"{std[widest]:.3f} ({_attack(widest)})",
                f"{abs(one[moved] - mean[moved]):.3f} ({_attack(moved)})",
            ]
        )
    if not body:
        raise ValueError(
            f"no defense under {path} has all {len(seeds)} seeds ({seeds}) in every cell yet"
        )
    n = len(seeds)
    header = [
        "Defense",
        f"worst attack, seed {ref}",
        f"worst attack, {n}-seed mean",
        f"mean under attack, seed {ref}",
        f"{n}-seed mean",
        "largest std of a cell",
        f"largest seed-{ref} distance from a cell's {n}-seed mean",
    ]
    text = f"**{metric}: seed {ref} against the mean over seeds {', '.join(map(str, seeds))}**"
    text += "\n\n" + markdown_table(header, body)
    if unfinished:
        text += f"\n\nNot all seeds finished yet (left out): {', '.join(unfinished)}."
    if limited:
        text += (
            f"\n\nRun under only some of the attacks, every seed finished (left out, as it "
            f"has no worst attack to compare): {', '.join(limited)}."
        )
    return text + "\n"
