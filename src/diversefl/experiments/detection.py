"""Detection report of a sweep: per aggregator and attack (placement), final accuracy next to
OracleSGD's with the same placement and seed, TPR, FPR, how often each of DiverseFL's two
tests alone would have let a Byzantine update through, and the honest clients' guide-update
cosines that a ``min_cosine`` threshold is chosen from (from ``decisions.csv``). Reads only
saved run files."""

from __future__ import annotations

import csv
import json
import math
import statistics
import tomllib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diversefl.plots import format_mean_std
from diversefl.results import read_summary


@dataclass(frozen=True)
class RunDetection:
    """What one run's files say about detection."""

    aggregator: str
    attack: str
    seed: int
    final_accuracy: float
    tpr: float | None
    fpr: float | None
    c1_pass: float | None  # share of Byzantine (client, round) pairs with guiding . z > 0
    c2_pass: float | None  # share with eps1 < |z| / |guiding| < eps2
    byzantine_ids: tuple[int, ...]
    per_client_pass: dict[int, float]  # Byzantine client -> share of rounds accepted
    honest_cos: tuple[float, ...] = ()  # guide-update cosine of every honest (client, round)


def _labels(run_dir: Path) -> tuple[str, str, int]:
    parts = run_dir.name.split("__")
    if len(parts) == 3 and parts[2].startswith("seed"):
        return parts[0], parts[1], int(parts[2][4:])
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary.get("aggregator", "?"), summary.get("attack", "?"), int(summary.get("seed", 0))


def read_run(run_dir: str | Path) -> RunDetection:
    """Detection figures of one finished run directory."""
    d = Path(run_dir)
    summary = read_summary(d / "summary.json")
    cfg = tomllib.loads((d / "config.toml").read_text())
    agg_cfg = cfg.get("aggregator", {})
    eps1, eps2 = float(agg_cfg.get("eps1", 0.5)), float(agg_cfg.get("eps2", 2.0))
    agg, atk, seed = _labels(d)
    c1_pass = c2_pass = None
    per_client: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    honest_cos: list[float] = []
    dec = d / "decisions.csv"
    if dec.exists():
        n_byz = n_c1 = n_c2 = 0
        with dec.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row["byzantine"] not in ("1", "True", "true"):
                    cos = float(row.get("cos") or "nan")  # absent in older runs
                    if math.isfinite(cos):
                        honest_cos.append(cos)
                    continue
                client = int(row["client"])
                per_client[client][0] += 1
                per_client[client][1] += row["accepted"] in ("1", "True", "true")
                if row.get("c1", "") == "":
                    continue
                n_byz += 1
                n_c1 += float(row["c1"]) > 0
                c2 = float(row["c2"])
                n_c2 += eps1 < c2 < eps2
        if n_byz:
            c1_pass, c2_pass = n_c1 / n_byz, n_c2 / n_byz

    def opt(key: str) -> float | None:
        v = summary.get(key)
        return None if v in (None, "") else float(v)

    ids = summary.get("byzantine_ids", [])
    return RunDetection(
        aggregator=agg,
        attack=atk,
        seed=seed,
        final_accuracy=float(summary["final_test_accuracy"]),
        tpr=opt("mean_tpr"),
        fpr=opt("mean_fpr"),
        c1_pass=c1_pass,
        c2_pass=c2_pass,
        byzantine_ids=tuple(ids) if isinstance(ids, list) else (),
        per_client_pass={c: a / t for c, (t, a) in sorted(per_client.items())},
        honest_cos=tuple(honest_cos),
    )


def read_sweep(sweep_dir: str | Path) -> list[RunDetection]:
    """Every finished run under ``sweep_dir`` (or the one run, if it is a run directory)."""
    root = Path(sweep_dir)
    if (root / "summary.json").is_file() and not (root / ".running").exists():
        return [read_run(root)]
    runs = [
        read_run(p.parent)
        for p in sorted(root.glob("*/summary.json"))
        if not (p.parent / ".running").exists()
    ]
    if not runs:
        raise FileNotFoundError(f"no finished runs (summary.json) under {root}")
    return runs


def detection_table(runs: list[RunDetection], oracle: str = "oracle") -> str:
    """Markdown: one row per (attack, aggregator), mean ± std over seeds of final accuracy,
    the gap to OracleSGD on the same attack and seed, TPR, FPR, and the C1-only / C2-only pass
    rates of Byzantine updates (1 - rate is what each test alone would have caught)."""
    base = {(r.attack, r.seed): r.final_accuracy for r in runs if r.aggregator == oracle}
    groups: dict[tuple[str, str], list[RunDetection]] = defaultdict(list)
    for r in runs:
        groups[(r.attack, r.aggregator)].append(r)
    agg_order = list(dict.fromkeys(r.aggregator for r in runs))
    atk_order = list(dict.fromkeys(r.attack for r in runs))
    header = [
        "attack",
        "aggregator",
        "seeds",
        "final acc",
        "vs Oracle (pts)",
        "TPR",
        "FPR",
        "C1 passes",
        "C2 passes",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for atk in atk_order:
        for agg in agg_order:
            rs = groups.get((atk, agg))
            if not rs:
                continue
            gaps = [
                100 * (r.final_accuracy - base[(r.attack, r.seed)])
                for r in rs
                if (r.attack, r.seed) in base and agg != oracle
            ]
            gap = "-" if not gaps else f"{statistics.fmean(gaps):+.1f}"

            def col(values: list[float | None]) -> str:
                return format_mean_std([v for v in values if v is not None])

            lines.append(
                "| "
                + " | ".join(
                    [
                        atk,
                        agg,
                        str(len(rs)),
                        format_mean_std([r.final_accuracy for r in rs]),
                        gap,
                        col([r.tpr for r in rs]) if agg != oracle else "-",
                        col([r.fpr for r in rs]),
                        col([r.c1_pass for r in rs]),
                        col([r.c2_pass for r in rs]),
                    ]
                )
                + " |"
            )
    return "\n".join(lines) + "\n"


def per_client_table(runs: list[RunDetection], aggregator: str) -> str:
    """Markdown: for one aggregator, per attack (placement) the Byzantine ids and the share of
    rounds each one was accepted, averaged over seeds. An aggregator without runs here is an
    error naming the ones present."""
    present = sorted({r.aggregator for r in runs})
    if aggregator not in present:
        raise ValueError(
            f"--per-client {aggregator}: no run of that aggregator here; present: "
            f"{', '.join(present) or 'none'}"
        )
    by_attack: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r.aggregator == aggregator:
            for c, share in r.per_client_pass.items():
                by_attack[r.attack][c].append(share)
    lines = [
        "| attack | Byzantine clients: share of rounds accepted |",
        "|---|---|",
    ]
    for atk, clients in by_attack.items():
        cells = ", ".join(f"{c}: {statistics.fmean(v):.2f}" for c, v in sorted(clients.items()))
        lines.append(f"| {atk} | {cells} |")
    return "\n".join(lines) + "\n"


THRESHOLDS = (0.3, 0.5, 0.7)  # min_cosine values whose honest rejections the table shows


def percentile(values: list[float] | tuple[float, ...], q: float) -> float:
    """The ``q``-th percentile (0-100, linear interpolation: numpy's default), NaN for none."""
    return float(np.percentile(values, q)) if len(values) else math.nan


def cosine_table(runs: list[RunDetection]) -> str:
    """Markdown: per (attack, aggregator) with logged cosines, the honest clients' guide-update
    cosine over all their (client, round) pairs: 1st / 5th / 50th percentile, and the share of
    honest updates a ``min_cosine`` of 0.3 / 0.5 / 0.7 would reject by the cosine test alone
    (mean ± std over seeds). Choose ``min_cosine`` below the 1st percentile."""
    groups: dict[tuple[str, str], list[RunDetection]] = defaultdict(list)
    for r in runs:
        if r.honest_cos:
            groups[(r.attack, r.aggregator)].append(r)
    if not groups:
        return "No honest cosines logged (DiverseFL runs with `eval.decisions = true`).\n"
    header = ["attack", "aggregator", "seeds", "p1", "p5", "median"]
    header += [f"rejected at {t}" for t in THRESHOLDS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (atk, agg), rs in groups.items():
        cells = [atk, agg, str(len(rs))]
        cells += [format_mean_std([percentile(r.honest_cos, q) for r in rs]) for q in (1, 5, 50)]
        for t in THRESHOLDS:
            shares = [sum(c < t for c in r.honest_cos) / len(r.honest_cos) for r in rs]
            cells.append(format_mean_std(shares))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
