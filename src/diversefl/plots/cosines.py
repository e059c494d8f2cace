"""DiverseFL's direction test over rounds for one run: chosen clients' guide-update cosines
against their thresholds, over the honest clients' band (who escapes, when, and by how much)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diversefl.plots.figure import _output_path, _pyplot
from diversefl.plots.runs import _load_run, _read_rows, as_number

_BAND = "#2ca02c"
_COLORS = ("#d62728", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass
class ClientSeries:
    """One client's cosine, threshold (NaN where the run logged none) and acceptance per
    round, aligned with :attr:`CosineSeries.rounds`."""

    client: int
    byzantine: bool
    cos: np.ndarray
    threshold: np.ndarray
    accepted: np.ndarray


@dataclass
class CosineSeries:
    """Per round: the honest clients' 5th, 50th and 95th percentile cosine, and the chosen
    clients' own series."""

    rounds: np.ndarray
    honest: np.ndarray  # [3, rounds]: 5th, 50th, 95th percentile
    clients: list[ClientSeries]


def cosine_series(rows: list[dict[str, str]], clients: list[int] | None = None) -> CosineSeries:
    """The series :func:`plot_cosines` draws from ``decisions.csv`` rows (columns round, client,
    byzantine, accepted, cos; threshold optional). ``clients`` None: the Byzantine ones."""
    if not rows or "cos" not in rows[0]:
        raise ValueError(
            "decisions.csv has no cos column: run DiverseFL with eval.decisions = true"
        )
    rounds = np.array(sorted({int(r["round"]) for r in rows}))
    at = {r: i for i, r in enumerate(rounds.tolist())}
    ids = sorted({int(r["client"]) for r in rows})
    byz = {int(r["client"]) for r in rows if r["byzantine"] == "1"}
    chosen = sorted(byz) if clients is None else clients
    unknown = [c for c in chosen if c not in ids]
    if unknown:
        raise ValueError(f"clients {unknown} are not in this run (its clients: 0-{max(ids)})")
    shape = (len(ids), len(rounds))
    cos, thr, acc = np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, dtype=bool)
    where = {c: k for k, c in enumerate(ids)}
    for r in rows:
        k, i = where[int(r["client"])], at[int(r["round"])]
        cos[k, i] = as_number(r["cos"])
        thr[k, i] = as_number(r.get("threshold"))
        acc[k, i] = r["accepted"] == "1"
    honest_rows = np.array([c not in byz for c in ids])
    honest = np.full((3, len(rounds)), np.nan)
    if honest_rows.any():
        h = cos[honest_rows]
        for i in range(len(rounds)):
            col = h[:, i][~np.isnan(h[:, i])]
            if col.size:
                honest[:, i] = np.percentile(col, [5, 50, 95])
    series = [
        ClientSeries(c, c in byz, cos[where[c]], thr[where[c]], acc[where[c]]) for c in chosen
    ]
    return CosineSeries(rounds, honest, series)


def plot_cosines(
    path: str | Path,
    out: str | Path | None = None,
    clients: list[int] | None = None,
    title: str | None = None,
) -> Path:
    """Draw one run's direction test over rounds (``decisions.csv``): the honest clients'
    5-95% band and median of the guide-update cosine, and for each chosen client (default: the
    Byzantine ones) its cosine, its threshold (dashed, where the run has one) and the rounds in
    which it was accepted (dots). Written to ``out`` (default ``<run>/cosines.png``)."""
    run_dir = Path(path)
    decisions = run_dir / "decisions.csv"
    if not decisions.is_file():
        raise FileNotFoundError(
            f"{decisions}: no such file; --cosines reads one run's directory, run with "
            "eval.decisions = true"
        )
    data = cosine_series(_read_rows(decisions), clients)
    run = _load_run(run_dir)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.0, 4.2), layout="constrained")
    x = data.rounds
    ax.fill_between(x, data.honest[0], data.honest[2], color=_BAND, alpha=0.2, lw=0,
                    label="honest clients, 5-95%")  # fmt: skip
    ax.plot(x, data.honest[1], color=_BAND, lw=1.0, label="honest median")
    for k, c in enumerate(data.clients):
        color = _COLORS[k % len(_COLORS)]
        kind = "Byzantine" if c.byzantine else "honest"
        share = f"{int(c.accepted.sum())}/{len(x)} accepted"
        ax.plot(
            x, c.cos, color=color, lw=0.6, alpha=0.7, label=f"client {c.client} ({kind}, {share})"
        )
        if not np.isnan(c.threshold).all():
            ax.plot(x, c.threshold, color=color, lw=1.0, ls="--")
        ax.scatter(x[c.accepted], c.cos[c.accepted], color=color, s=6, zorder=3)
    ax.set_xlabel("round")
    ax.set_ylabel("cos(guide, update)")
    ax.set_ylim(-1.05, 1.05)
    ax.axhline(0.0, color="#999999", lw=0.5)
    ax.set_title(title or f"{run.aggregator} / {run.attack} / seed {run.seed}: dots = accepted, "
                 "dashed = threshold")  # fmt: skip
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    target = _output_path(run_dir, out, "cosines.png")
    fig.savefig(target, dpi=130)
    plt.close(fig)
    return target
