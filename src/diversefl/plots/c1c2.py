"""DiverseFL's C1 x C2 per client and round against its thresholds, one panel per attack:
the paper's Fig. 2."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diversefl.plots.figure import _output_path, _panel_grid, _pyplot
from diversefl.plots.runs import _find_runs, _read_rows, _Run, as_number
from diversefl.plots.style import aggregator_name, aggregator_sort_key, attack_name, attack_sort_key

_HONEST = "#2ca02c"
_BYZANTINE = "#d62728"
_THRESHOLD = "#555555"


def _eps(run: _Run) -> tuple[float, float]:
    """DiverseFL's thresholds from config.toml's [aggregator] (defaults 0.5 and 2)."""
    agg = run.config.get("aggregator", {})
    return float(agg.get("eps1", 0.5)), float(agg.get("eps2", 2.0))


def _symlog_ticks(ax: Any, lo: float, hi: float) -> None:
    """Limits and at most ~5 decade ticks per sign on a symlog (linthresh 1) y axis."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    top = max(hi * 2.0, 4.0)
    bottom = min(lo * 2.0, -1.6) if lo < -1 else -1.6
    ax.set_ylim(bottom, top)
    up = max(0, math.ceil(math.log10(top)))
    down = max(0, math.ceil(math.log10(-bottom)))
    step = max(1, math.ceil(max(up, down) / 4))
    ticks = [0.0]
    ticks += [10.0**k for k in range(0, up + 1, step) if 10.0**k <= top]
    ticks += [-(10.0**k) for k in range(0, down + 1, step) if -(10.0**k) >= bottom]

    def fmt(v: float, _pos: int) -> str:
        if v == 0:
            return "0"
        k = round(math.log10(abs(v)))
        sign = "\u2212" if v < 0 else ""
        return f"{sign}{10**k}" if k <= 1 else f"{sign}$10^{{{k}}}$"

    ax.yaxis.set_major_locator(FixedLocator(sorted(ticks)))
    ax.yaxis.set_major_formatter(FuncFormatter(fmt))
    ax.yaxis.set_minor_locator(NullLocator())


def _runs_with_scores(path: str | Path) -> dict[str, tuple[_Run, list[dict[str, str]]]]:
    """Per attack, the decisions.csv rows of the first run (lowest seed, then aggregator
    order) whose decisions.csv has c1 and c2 columns; an error when no run has one."""
    chosen: dict[str, tuple[_Run, list[dict[str, str]]]] = {}
    runs = _find_runs(path)
    for run in sorted(runs, key=lambda r: (r.seed, aggregator_sort_key(r.aggregator), str(r.dir))):
        f = run.dir / "decisions.csv"
        if run.attack in chosen or not f.is_file():
            continue
        with f.open(newline="") as fh:
            header = next(csv.reader(fh), [])
        if "c1" in header and "c2" in header:
            chosen[run.attack] = (run, _read_rows(f))
    if not chosen:
        raise ValueError(
            f"no decisions.csv with c1/c2 columns under {path}; run DiverseFL with "
            "eval.decisions = true"
        )
    return chosen


@dataclass
class _PanelData:
    """One panel's scatter points, ``{byzantine: (rounds, C1 x C2)}``, and the client-round
    counts of its title."""

    points: dict[bool, tuple[list[float], list[float]]] = field(
        default_factory=lambda: {False: ([], []), True: ([], [])}
    )
    byz_accepted: int = 0
    byz_all: int = 0
    honest_rejected: int = 0
    honest_all: int = 0


def _panel_data(rows: list[dict[str, str]], clients: int | None) -> _PanelData:
    """Count accepted Byzantine and rejected honest client-rounds over all ``rows``; keep the
    finite C1 x C2 of every Byzantine row and of the first ``clients`` honest clients' rows
    (by id; all with None)."""
    honest_ids = sorted({int(r["client"]) for r in rows if r["byzantine"] in ("0", "False")})
    drawn = set(honest_ids if clients is None else honest_ids[:clients])
    data = _PanelData()
    for r in rows:
        byz = r["byzantine"] not in ("0", "False", "")
        acc = r["accepted"] not in ("0", "False", "")
        if byz:
            data.byz_all += 1
            data.byz_accepted += acc
        else:
            data.honest_all += 1
            data.honest_rejected += not acc
        if not byz and int(r["client"]) not in drawn:
            continue
        y = as_number(r["c1"]) * as_number(r["c2"])
        if math.isfinite(y):
            data.points[byz][0].append(float(r["round"]))
            data.points[byz][1].append(y)
    return data


def _panel_title(index: int, attack: str, data: _PanelData) -> str:
    """'(a) Sign flip' over the panel's detection counts."""
    stats = (
        f"Byzantine accepted in {data.byz_accepted} of {data.byz_all} client-rounds"
        if data.byz_all
        else "no Byzantine clients"
    )
    stats += f"\nhonest rejected in {data.honest_rejected} of {data.honest_all}"
    return f"({chr(ord('a') + index)}) {attack_name(attack)}\n{stats}"


def _draw_panel(
    ax: Any, index: int, attack: str, eps: tuple[float, float], data: _PanelData
) -> None:
    """One attack's panel: the accepted band between the thresholds, the honest and Byzantine
    points, a symlog y axis and the title with the detection counts."""
    import numpy as np

    eps1, eps2 = eps
    ax.axhspan(eps1, eps2, color=_HONEST, alpha=0.12, linewidth=0, zorder=0)
    ax.axhline(eps1, color=_THRESHOLD, linestyle="--", linewidth=0.9, zorder=1)
    ax.axhline(eps2, color=_THRESHOLD, linestyle="-.", linewidth=0.9, zorder=1)
    ax.axhline(0, color="#999999", linewidth=0.6, zorder=1)
    for byz, colour, size, alpha in ((False, _HONEST, 3, 0.45), (True, _BYZANTINE, 5, 0.8)):
        xs, ys = data.points[byz]
        ax.scatter(
            xs, ys, s=size, c=colour, alpha=alpha, linewidths=0, rasterized=True, zorder=2 + byz
        )
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("Iteration")
    ax.grid(True, alpha=0.3, which="major")
    ax.tick_params(labelsize=8)
    if ax.get_subplotspec().is_first_col():
        ax.set_ylabel(r"$C_1 \times C_2$ (symlog)")
    ax.set_title(_panel_title(index, attack, data), fontsize=9, linespacing=1.3)
    ys_all = np.array(data.points[False][1] + data.points[True][1] + [eps2, -1.0])
    _symlog_ticks(ax, float(np.nanmin(ys_all)), float(np.nanmax(ys_all)))


def _legend_handles(eps_seen: set[tuple[float, float]]) -> list[Any]:
    """The figure legend's entries; the thresholds' values where every panel has the same."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    eps_txt = (
        (
            rf"$\epsilon_1$ = {next(iter(eps_seen))[0]:g}",
            rf"$\epsilon_2$ = {next(iter(eps_seen))[1]:g}",
        )
        if len(eps_seen) == 1
        else (r"$\epsilon_1$", r"$\epsilon_2$")
    )
    dot: dict[str, Any] = {"marker": "o", "linestyle": "", "markersize": 5}
    return [
        Line2D([], [], color=_HONEST, label="honest client", **dot),
        Line2D([], [], color=_BYZANTINE, label="Byzantine client", **dot),
        Line2D([], [], color=_THRESHOLD, linestyle="--", label=eps_txt[0]),
        Line2D([], [], color=_THRESHOLD, linestyle="-.", label=eps_txt[1]),
        Patch(color=_HONEST, alpha=0.12, label="accepted band (if $C_1 > 0$)"),
    ]


def _suptitle(aggregators: set[str], clients: int | None) -> str:
    """'DiverseFL: C1 x C2 per client-round (10 honest clients drawn)'."""
    labels = sorted(aggregators, key=aggregator_sort_key)
    n_honest = f"{clients} honest" if clients is not None else "all honest"
    return (
        f"{', '.join(aggregator_name(g) for g in labels)}: "
        rf"$C_1 \times C_2$ per client-round ({n_honest} clients drawn)"
    )


def plot_c1c2(path: str | Path, out: str | Path | None = None, clients: int | None = None) -> Path:
    """Paper's Fig. 2: C1 x C2 per client and iteration, one panel per attack."""
    if clients is not None and clients < 0:
        raise ValueError(f"clients must be >= 0, got {clients}")
    chosen = _runs_with_scores(path)
    target = _output_path(path, out, "c1c2.png")
    plt = _pyplot()
    attacks = sorted(chosen, key=attack_sort_key)
    fig, axes = _panel_grid(plt, len(attacks), sharey=False, min_width=6.5)
    eps_seen = set()
    for i, (ax, attack) in enumerate(zip(axes, attacks, strict=True)):
        run, rows = chosen[attack]
        eps = _eps(run)
        eps_seen.add(eps)
        _draw_panel(ax, i, attack, eps, _panel_data(rows, clients))
    fig.legend(
        handles=_legend_handles(eps_seen),
        loc="outside lower center",
        ncol=5 if len(attacks) > 1 else 3,
        fontsize=9,
        frameon=False,
    )
    fig.suptitle(_suptitle({chosen[a][0].aggregator for a in attacks}, clients), fontsize=10)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
