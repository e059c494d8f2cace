"""Detection report of a sweep: per aggregator and attack (placement), final accuracy next to
OracleSGD's with the same placement and seed, TPR, FPR, how often each of DiverseFL's two
tests alone would have let a Byzantine update through, and the honest clients' guide-update
cosines that a ``min_cosine`` threshold is chosen from (from ``decisions.csv``); and the spread
over seeds (median and worst seed) with the Byzantine client that escapes in the worst seed.
Reads only saved run files."""

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
    run_dir: Path | None = None  # where the run's files are (decisions.csv for escape profiles)


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
        run_dir=d,
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


def _worst(pairs: list[tuple[float, int]], highest: bool = False) -> tuple[float, int] | None:
    """The lowest (or, with ``highest``, the highest) ``(value, seed)``; ties go to the lowest
    seed. None for no pairs."""
    if not pairs:
        return None
    return min(pairs, key=lambda p: (-p[0] if highest else p[0], p[1]))


def _spread_cells(pairs: list[tuple[float, int]], fmt: str, highest: bool = False) -> list[str]:
    """Two cells: the median of the values and the worst one with its seed (``-`` for none)."""
    worst = _worst(pairs, highest)
    if worst is None:
        return ["-", "-"]
    median = statistics.median(v for v, _ in pairs)
    return [_fmt(median, fmt), f"{_fmt(worst[0], fmt)} (seed {worst[1]})"]


def _fmt(value: float, fmt: str) -> str:
    """``value`` formatted, a negative that rounds to zero shown as zero (not ``-0.0``)."""
    text = format(value, fmt)
    zero = format(0.0, fmt)
    return zero if text.lstrip("+-") == zero.lstrip("+-") else text


def spread_table(runs: list[RunDetection], oracle: str = "oracle") -> str:
    """Markdown: one row per (attack, aggregator) other than ``oracle``, over seeds: TPR median
    and worst (lowest) seed, the gap to OracleSGD (points, same attack and seed) median and worst
    (most negative) seed, FPR median and highest seed. Means hide a bad seed; this shows it."""
    base = {(r.attack, r.seed): r.final_accuracy for r in runs if r.aggregator == oracle}
    groups: dict[tuple[str, str], list[RunDetection]] = defaultdict(list)
    for r in runs:
        if r.aggregator != oracle:
            groups[(r.attack, r.aggregator)].append(r)
    header = ["attack", "aggregator", "seeds", "TPR median", "TPR worst"]
    header += ["vs Oracle median (pts)", "vs Oracle worst (pts)", "FPR median", "FPR max"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (atk, agg), rs in _ordered(groups, runs):
        tprs = [(r.tpr, r.seed) for r in rs if r.tpr is not None]
        fprs = [(r.fpr, r.seed) for r in rs if r.fpr is not None]
        gaps = [
            (100 * (r.final_accuracy - base[(r.attack, r.seed)]), r.seed)
            for r in rs
            if (r.attack, r.seed) in base
        ]
        cells = [atk, agg, str(len(rs))]
        cells += _spread_cells(tprs, ".3f") + _spread_cells(gaps, "+.1f")
        cells += _spread_cells(fprs, ".3f", highest=True)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ordered(
    groups: dict[tuple[str, str], list[RunDetection]], runs: list[RunDetection]
) -> list[tuple[tuple[str, str], list[RunDetection]]]:
    """The groups by attack, then aggregator, each in order of first appearance in ``runs`` (as
    detection_table orders its rows)."""
    agg_order = list(dict.fromkeys(r.aggregator for r in runs))
    atk_order = list(dict.fromkeys(r.attack for r in runs))
    keys = [(atk, agg) for atk in atk_order for agg in agg_order if (atk, agg) in groups]
    return [(k, groups[k]) for k in keys]


@dataclass(frozen=True)
class EscapeProfile:
    """When, and at what guide-update cosine, one client was accepted in one run."""

    client: int
    n_rounds: int  # the run's last round in decisions.csv
    rounds_seen: int  # rounds with a decision for this client
    accepted_rounds: tuple[int, ...]
    median_cos: float | None  # over the accepted rounds (None: no cosine logged)
    median_threshold: float | None  # likewise (None: the rule logs no cosine threshold)

    @property
    def first_round(self) -> int | None:
        """The first round the client was accepted (None: never)."""
        return min(self.accepted_rounds, default=None)

    @property
    def last_round(self) -> int | None:
        """The last round the client was accepted (None: never)."""
        return max(self.accepted_rounds, default=None)

    @property
    def early_cutoff(self) -> int:
        """The last round of the run's first 10% (at least round 1)."""
        return max(1, math.ceil(self.n_rounds / 10))

    @property
    def early_share(self) -> float | None:
        """Share of the accepted rounds within the first 10% of the run (None: never accepted):
        near 1 means the client only escapes while the model is young."""
        if not self.accepted_rounds:
            return None
        early = sum(r <= self.early_cutoff for r in self.accepted_rounds)
        return early / len(self.accepted_rounds)


def _truthy(value: str | None) -> bool:
    """A decisions.csv boolean cell (``1`` or ``True``)."""
    return value in ("1", "True", "true")


def _finite(value: str | None) -> float | None:
    """A numeric decisions.csv cell, None when absent, empty or not finite."""
    if value in (None, ""):
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def escape_profile(run_dir: str | Path, client: int) -> EscapeProfile:
    """Stream ``run_dir/decisions.csv`` for one client: the rounds it was accepted in and the
    median ``cos`` and ``threshold`` over those rounds (why the test let it through)."""
    path = Path(run_dir) / "decisions.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no decisions.csv in {run_dir} (run with eval.decisions = true)")
    n_rounds = seen = 0
    rounds: list[int] = []
    cosines: list[float] = []
    thresholds: list[float] = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"round", "client", "accepted"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            rnd = int(row["round"])
            n_rounds = max(n_rounds, rnd)
            if int(row["client"]) != client:
                continue
            seen += 1
            if not _truthy(row["accepted"]):
                continue
            rounds.append(rnd)
            for cell, into in ((row.get("cos"), cosines), (row.get("threshold"), thresholds)):
                value = _finite(cell)
                if value is not None:
                    into.append(value)
    return EscapeProfile(
        client=client,
        n_rounds=n_rounds,
        rounds_seen=seen,
        accepted_rounds=tuple(rounds),
        median_cos=statistics.median(cosines) if cosines else None,
        median_threshold=statistics.median(thresholds) if thresholds else None,
    )


def _escape_line(run: RunDetection) -> str:
    """One Markdown bullet: the worst-seed run's most-accepted Byzantine client, when and at
    what cosine (and threshold) it was accepted."""
    head = f"- {run.attack} / {run.aggregator}, seed {run.seed} (TPR {run.tpr:.3f}): "
    if run.run_dir is None or not run.per_client_pass:
        return head + "no decisions.csv, so which client escaped is unknown."
    client = min(run.per_client_pass, key=lambda c: (-run.per_client_pass[c], c))
    p = escape_profile(run.run_dir, client)
    if not p.accepted_rounds:
        return head + "no Byzantine client accepted in decisions.csv."
    share = run.per_client_pass[client]  # = accepted / seen, from read_run
    text = (
        f"client {client} accepted in {len(p.accepted_rounds)} of {p.rounds_seen} rounds "
        f"({share:.2f}), first in round {p.first_round}, last in round {p.last_round}; "
        f"{p.early_share:.2f} of them in the first 10% of the run "
        f"(rounds <= {p.early_cutoff} of {p.n_rounds}); "
    )
    if p.median_cos is None:
        return head + text + "no cosine in decisions.csv."
    text += f"over those rounds median cos {p.median_cos:+.3f}"
    if p.median_threshold is None:
        return head + text + " (no cosine threshold in decisions.csv)."
    return head + text + f" against threshold {p.median_threshold:.3f}."


def escapes_section(runs: list[RunDetection], oracle: str = "oracle") -> str:
    """Markdown after :func:`spread_table`: for each (attack, aggregator) whose worst-seed TPR
    is below 1, which Byzantine client escaped most in that seed and at what cosine."""
    groups: dict[tuple[str, str], list[RunDetection]] = defaultdict(list)
    for r in runs:
        if r.aggregator != oracle and r.tpr is not None:
            groups[(r.attack, r.aggregator)].append(r)
    lines = []
    for _, rs in _ordered(groups, runs):
        worst = min(rs, key=lambda r: (r.tpr, r.seed))
        if worst.tpr is not None and worst.tpr < 1:
            lines.append(_escape_line(worst))
    if not lines:
        return "No escapes: every worst seed has TPR 1 (or no TPR was recorded).\n"
    return "Escapes in each worst seed (TPR below 1):\n\n" + "\n".join(lines) + "\n"
