"""Figures and tables from run and sweep directories: accuracy curves per attack (the paper's
Figs. 3-13), DiverseFL's C1 x C2 scatter (Fig. 2) and markdown tables of final accuracy.
Only reads files; matplotlib is imported lazily with the Agg backend."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import statistics
import tomllib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------
# Names, orders and styles
# ---------------------------------------------------------------------------------------------

METRIC_NAMES = {
    "test_accuracy": "Top-1 test accuracy",
    "test_loss": "Test loss",
    "main_accuracy": "Main task accuracy",
    "backdoor_accuracy": "Backdoor accuracy",
    "tpr": "TPR (Byzantine rejected)",
    "fpr": "FPR (honest rejected)",
    "n_accepted": "Accepted clients",
}
ATTACK_ORDER = ["none", "gaussian", "sign_flip", "same_value", "label_flip", "backdoor"]
ATTACK_NAMES = {
    "none": "No Attack",
    "gaussian": "Gaussian Attack",
    "sign_flip": "Sign Flip Attack",
    "same_value": "Same Value Attack",
    "label_flip": "Label Flip Attack",
    "backdoor": "Backdoor Attack",
}
ATTACK_SHORT = {
    "none": "No attack",
    "gaussian": "Gaussian",
    "sign_flip": "Sign flip",
    "same_value": "Same value",
    "label_flip": "Label flip",
    "backdoor": "Backdoor",
    "alie": "ALIE",
    "ipm": "IPM",
    "min_max": "Min-Max",
    "min_sum": "Min-Sum",
    "adaptive": "Adaptive",
}
# name -> (display name, colour, linestyle, marker); the order is the legend/table order
_KNOWN: dict[str, tuple[str, str, str, str]] = {
    "oracle": ("OracleSGD", "#000000", "--", ""),
    "mean": ("Mean", "#7f7f7f", ":", "x"),
    "median": ("Median", "#1f77b4", "-", "s"),
    "noisy_median": ("N-Median", "#17becf", "-", "v"),
    "trimmed_mean": ("Trimmed Mean", "#e377c2", "-", "P"),
    "krum": ("Krum", "#8c564b", "-", "D"),
    "multi_krum": ("Multi-Krum", "#bcbd22", "-", "d"),
    "bulyan": ("Bulyan", "#9467bd", "-", "^"),
    "rsa": ("RSA", "#ff7f0e", "-", "o"),
    "geomed": ("GeoMed", "#637939", "-", "<"),
    "centered_clipping": ("Centered Clipping", "#843c39", "-", ">"),
    "fltrust": ("FLTrust", "#3182bd", "-.", "h"),
    "diversefl": ("DiverseFL", "#d62728", "-", "*"),
    "diversefl_s1": ("DiverseFL (s=1%)", "#2ca02c", "-", "*"),
    "diversefl_s3": ("DiverseFL (s=3%)", "#e6007e", "-", "p"),
}
# trimmed means other than Yin's (plain ``trimmed_mean``, in _KNOWN): their own shades of its
# colour, line styles and markers; keyed by the word after "trimmed_mean" in the label
_TRIMMED_VARIANTS: dict[str, tuple[str, str, str]] = {
    "xie": ("#c51b7d", "--", "X"),
    "guerraoui": ("#7a0177", "-.", "H"),
}
_HASH_COLOURS = [
    "#393b79", "#5254a3", "#8ca252", "#b5cf6b", "#8c6d31", "#bd9e39", "#ad494a",
    "#d6616b", "#7b4173", "#a55194", "#3182bd", "#e6550d", "#31a354", "#756bb1",
]  # fmt: skip
_HASH_STYLES = ["-", "--", "-.", ":"]
_HASH_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "<", ">", "h"]
_RUN_DIR_RE = re.compile(r"^(?P<agg>.+?)__(?P<attack>.+)__seed(?P<seed>-?\d+)$")
_SUFFIXES = {".png", ".pdf", ".svg"}


def _key(label: str) -> str:
    """Normalised aggregator key: lower case, '-' and spaces as '_'."""
    return re.sub(r"[-\s]+", "_", label.strip().lower())


def _known_key(label: str) -> str | None:
    """The entry of the fixed style table that ``label`` maps to, if any."""
    k = _key(label)
    if k in _KNOWN:
        return k
    if k.startswith("trimmed_mean") or k.startswith("trimmedmean"):
        return "trimmed_mean"
    return None


def _trimmed_variant(label: str) -> str | None:
    """Which of _TRIMMED_VARIANTS a trimmed-mean label names ('Trimmed Mean (xie)' -> 'xie')."""
    k = _key(label)
    rest = re.sub(r"^trimmed_?mean", "", k)
    if rest == k:
        return None
    words = set(re.findall(r"[a-z]+", rest))
    return next((v for v in _TRIMMED_VARIANTS if v in words), None)


def aggregator_style(label: str) -> dict[str, str]:
    """Fixed matplotlib style (color, linestyle, marker) of an aggregator label."""
    known = _known_key(label)
    variant = _trimmed_variant(label) if known == "trimmed_mean" else None
    if variant is not None:
        color, ls, marker = _TRIMMED_VARIANTS[variant]
        return {"color": color, "linestyle": ls, "marker": marker}
    if known is not None:
        _, color, ls, marker = _KNOWN[known]
        return {"color": color, "linestyle": ls, "marker": marker}
    h = int(hashlib.sha256(_key(label).encode()).hexdigest(), 16)
    return {
        "color": _HASH_COLOURS[h % len(_HASH_COLOURS)],
        "linestyle": _HASH_STYLES[(h // 101) % len(_HASH_STYLES)],
        "marker": _HASH_MARKERS[(h // 1009) % len(_HASH_MARKERS)],
    }


def aggregator_name(label: str) -> str:
    """Readable aggregator name as in the paper ('noisy_median' -> 'N-Median')."""
    known = _known_key(label)
    if known is not None and known != "trimmed_mean":
        return _KNOWN[known][0]
    m = re.fullmatch(r"diversefl_s(\d+(?:\.\d+)?)", _key(label))
    if m:
        return f"DiverseFL (s={m.group(1)}%)"
    if known == "trimmed_mean":
        rest = _key(label)[len("trimmed_mean") :].strip("_")
        return f"Trimmed Mean ({rest})" if rest else "Trimmed Mean"
    return label


def attack_name(label: str) -> str:
    """Readable attack name as in the paper's panel titles ('sign_flip' -> 'Sign Flip Attack')."""
    if label in ATTACK_NAMES:
        return ATTACK_NAMES[label]
    words = label.replace("_", " ").replace("-", " ").title()
    return words if words.lower().endswith("attack") else f"{words} Attack"


def attack_sort_key(label: str) -> tuple[int, str]:
    """Fixed attack order: the paper's attacks first, then the rest alphabetically."""
    return (ATTACK_ORDER.index(label), "") if label in ATTACK_ORDER else (len(ATTACK_ORDER), label)


def aggregator_sort_key(label: str) -> tuple[int, str]:
    """Fixed aggregator order: the known names in table order, then the rest alphabetically."""
    order = list(_KNOWN)
    known = _known_key(label)
    if known is None and re.fullmatch(r"diversefl_s\d+(\.\d+)?", _key(label)):
        known = "diversefl"
    return (order.index(known), _key(label)) if known else (len(order), _key(label))


# ---------------------------------------------------------------------------------------------
# Finding and reading runs
# ---------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """One run directory with its labels."""

    dir: Path
    aggregator: str
    attack: str
    seed: int
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def _read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts."""
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def as_number(value: Any) -> float:
    """A CSV/JSON value as float; empty, None or unparsable -> NaN."""
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _load_run(d: Path) -> _Run:
    """Labels of a run dir: from its name, else summary.json, else config.toml."""
    cfg: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    if (d / "config.toml").exists():
        try:
            cfg = tomllib.loads((d / "config.toml").read_text())
        except (tomllib.TOMLDecodeError, OSError):
            cfg = {}
    if (d / "summary.json").exists():
        try:
            summary = json.loads((d / "summary.json").read_text())
        except (json.JSONDecodeError, OSError):
            summary = {}
    for name in (d.name, str(summary.get("name", "")), str(cfg.get("name", ""))):
        m = _RUN_DIR_RE.match(name)
        if m:
            return _Run(d, m["agg"], m["attack"], int(m["seed"]), cfg, summary)
    agg = summary.get("aggregator") or cfg.get("aggregator", {}).get("name") or d.name
    atk = summary.get("attack") or cfg.get("attack", {}).get("name") or "none"
    seed = summary.get("seed", cfg.get("seed", 0))
    return _Run(d, str(agg), str(atk), int(seed), cfg, summary)


def _find_runs(path: str | Path) -> list[_Run]:
    """Every run dir (a dir holding metrics.csv) at or below ``path``."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such directory")
    if (p / "metrics.csv").is_file():
        dirs = [p]
    else:
        # os.walk with followlinks: a figure's view dir holds symlinks to shared run dirs
        dirs = sorted({Path(root) for root, _, files in os.walk(p, followlinks=True)
                       if "metrics.csv" in files})  # fmt: skip
    if not dirs:
        raise FileNotFoundError(f"no run directories (with metrics.csv) found in {p}")
    runs: list[_Run] = []
    seen: dict[Path, Path] = {}  # resolved -> first path (a figure view links to run dirs)
    labels: dict[tuple[str, str, int], Path] = {}
    for d in dirs:
        real = d.resolve()
        if real in seen:
            continue
        seen[real] = d
        run = _load_run(d)
        key = (run.aggregator, run.attack, run.seed)
        if key in labels:  # two experiments would be averaged as if they were seeds
            raise ValueError(
                f"{labels[key]} and {d} are both {run.aggregator} / {run.attack} / seed "
                f"{run.seed}: point the command at one experiment's directory (e.g. one sweep's "
                "--out), not at a folder holding several"
            )
        labels[key] = d
        runs.append(run)
    return runs


def _output_path(path: str | Path, out: str | Path | None, default_name: str) -> Path:
    """Where to write a figure; the suffix must be .png, .pdf or .svg."""
    target = Path(out) if out is not None else Path(path) / default_name
    if target.suffix.lower() not in _SUFFIXES:
        raise ValueError(
            f"unsupported figure format {target.suffix!r} for {target}; use .png, .pdf or .svg"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panel_grid(plt: Any, n: int, sharey: bool, min_width: float = 0.0) -> tuple[Any, list[Any]]:
    """A figure with ``n`` panels, at most 3 per row, unused axes hidden."""
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(max(4.0 * ncols, min_width), 3.1 * nrows + 0.7),
        sharey=sharey,
        squeeze=False,
        layout="constrained",
    )
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


# ---------------------------------------------------------------------------------------------
# Curves
# ---------------------------------------------------------------------------------------------


def _series(rows: list[dict[str, str]], metric: str) -> dict[int, float]:
    """round -> finite metric value of one run."""
    out: dict[int, float] = {}
    for r in rows:
        v = as_number(r.get(metric))
        rnd = as_number(r.get("round"))
        if math.isfinite(v) and math.isfinite(rnd):
            out[int(rnd)] = v
    return out


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
    metrics = [metric] if isinstance(metric, str) else list(metric)
    for m in metrics:
        if m not in METRIC_NAMES:
            raise ValueError(f"unknown metric {m!r}; choose from {', '.join(METRIC_NAMES)}")
    runs = _find_runs(path)
    target = _output_path(path, out, f"{'-'.join(metrics)}.png")
    data: dict[tuple[str, str, str], list[dict[int, float]]] = defaultdict(list)
    available: set[str] = set()
    for run in runs:
        rows = _read_rows(run.dir / "metrics.csv")
        for m in METRIC_NAMES:
            if any(math.isfinite(as_number(r.get(m))) for r in rows):
                available.add(m)
        for m in metrics:
            s = _series(rows, m)
            if s:
                data[(m, run.attack, run.aggregator)].append(s)
    missing = [m for m in metrics if not any(k[0] == m for k in data)]
    if missing:
        have = ", ".join(m for m in METRIC_NAMES if m in available) or "none"
        raise ValueError(
            f"metric {missing[0]!r} not found in the runs under {path}; available: {have}"
        )

    import numpy as np

    plt = _pyplot()
    attacks = sorted({a for _, a, _ in data}, key=attack_sort_key)
    aggs = sorted({g for _, _, g in data}, key=aggregator_sort_key)
    panels = [(m, a) for m in metrics for a in attacks]
    unbounded = {"test_loss", "n_accepted"}
    sharey = len(metrics) == 1 and metrics[0] not in unbounded
    fig, axes = _panel_grid(
        plt,
        len(panels),
        sharey=sharey,
        min_width=min(12.0, 2.2 * len(aggs)),
    )
    handles: dict[str, Any] = {}
    n_seeds = 1
    spans: list[tuple[float, float] | None] = []  # per panel: lowest and highest value drawn
    for i, (ax, (metric, attack)) in enumerate(zip(axes, panels, strict=True)):
        ymax = 0.0
        ymin = math.inf
        for agg in aggs:
            seeds = data.get((metric, attack, agg))
            if not seeds:
                continue
            n_seeds = max(n_seeds, len(seeds))
            # up to the last round every seed reached: a seed still running (or stopped)
            # would otherwise make the mean jump where it drops out
            last = min(max(s) for s in seeds)
            rounds = sorted(r for r in set().union(*seeds) if r <= last)
            vals = np.array([[s.get(r, np.nan) for s in seeds] for r in rounds], dtype=float)
            mean = np.nanmean(vals, axis=1)
            ymax = max(ymax, float(np.nanmax(vals)))
            ymin = min(ymin, float(np.nanmin(vals)))
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
            handles.setdefault(aggregator_name(agg), line)
        spans.append((ymin, ymax) if math.isfinite(ymin) else None)
        label = METRIC_NAMES[metric] if len(metrics) > 1 else attack_name(attack)
        if len(metrics) > 1 and len(attacks) > 1:
            label += f", {attack_name(attack)}"
        ax.set_title(f"({chr(ord('a') + i)}) {label}", fontsize=10)
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
    # bounded metrics: limits from the data of every panel that shares them (set panel by
    # panel, the first panel's limits would fix a shared axis and cut off later panels' curves)
    for ax, (metric, _), span in zip(axes, panels, spans, strict=True):
        group = [s for s in (spans if sharey else [span]) if s is not None]
        if metric in unbounded or not group:
            continue
        lo, hi = min(s[0] for s in group), max(s[1] for s in group)
        pad = 0.05 * (hi - lo) or 0.05  # matplotlib's default margin
        ax.set_ylim(min(max(lo - pad, -0.02), lo), max(min(hi + pad, 1.02), hi))
    ncols = min(len(panels), 3)
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
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


# ---------------------------------------------------------------------------------------------
# C1 x C2 (Fig. 2)
# ---------------------------------------------------------------------------------------------


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


def plot_c1c2(path: str | Path, out: str | Path | None = None, clients: int | None = None) -> Path:
    """Paper's Fig. 2: C1 x C2 per client and iteration, one panel per attack."""
    if clients is not None and clients < 0:
        raise ValueError(f"clients must be >= 0, got {clients}")
    runs = _find_runs(path)
    chosen: dict[str, tuple[_Run, list[dict[str, str]]]] = {}
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
    target = _output_path(path, out, "c1c2.png")

    import numpy as np

    plt = _pyplot()
    attacks = sorted(chosen, key=attack_sort_key)
    fig, axes = _panel_grid(plt, len(attacks), sharey=False, min_width=6.5)
    eps_seen = set()
    for i, (ax, attack) in enumerate(zip(axes, attacks, strict=True)):
        run, rows = chosen[attack]
        eps1, eps2 = _eps(run)
        eps_seen.add((eps1, eps2))
        honest_ids = sorted({int(r["client"]) for r in rows if r["byzantine"] in ("0", "False")})
        drawn = set(honest_ids if clients is None else honest_ids[:clients])
        byz_acc = byz_all = hon_rej = hon_all = 0
        pts: dict[bool, tuple[list[float], list[float]]] = {False: ([], []), True: ([], [])}
        for r in rows:
            byz = r["byzantine"] not in ("0", "False", "")
            acc = r["accepted"] not in ("0", "False", "")
            if byz:
                byz_all += 1
                byz_acc += acc
            else:
                hon_all += 1
                hon_rej += not acc
            if not byz and int(r["client"]) not in drawn:
                continue
            y = as_number(r["c1"]) * as_number(r["c2"])
            if math.isfinite(y):
                pts[byz][0].append(float(r["round"]))
                pts[byz][1].append(y)
        ax.axhspan(eps1, eps2, color="#2ca02c", alpha=0.12, linewidth=0, zorder=0)
        ax.axhline(eps1, color="#555555", linestyle="--", linewidth=0.9, zorder=1)
        ax.axhline(eps2, color="#555555", linestyle="-.", linewidth=0.9, zorder=1)
        ax.axhline(0, color="#999999", linewidth=0.6, zorder=1)
        for byz, colour, size, alpha in ((False, "#2ca02c", 3, 0.45), (True, "#d62728", 5, 0.8)):
            xs, ys = pts[byz]
            ax.scatter(
                xs, ys, s=size, c=colour, alpha=alpha, linewidths=0, rasterized=True, zorder=2 + byz
            )
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel("Iteration")
        ax.grid(True, alpha=0.3, which="major")
        ax.tick_params(labelsize=8)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(r"$C_1 \times C_2$ (symlog)")
        stats = (
            f"Byzantine accepted in {byz_acc} of {byz_all} client-rounds"
            if byz_all
            else "no Byzantine clients"
        )
        stats += f"\nhonest rejected in {hon_rej} of {hon_all}"
        ax.set_title(
            f"({chr(ord('a') + i)}) {attack_name(attack)}\n{stats}", fontsize=9, linespacing=1.3
        )
        ys_all = np.array(pts[False][1] + pts[True][1] + [eps2, -1.0])
        _symlog_ticks(ax, float(np.nanmin(ys_all)), float(np.nanmax(ys_all)))
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
    dot = {"marker": "o", "linestyle": "", "markersize": 5}
    handles = [
        Line2D([], [], color="#2ca02c", label="honest client", **dot),
        Line2D([], [], color="#d62728", label="Byzantine client", **dot),
        Line2D([], [], color="#555555", linestyle="--", label=eps_txt[0]),
        Line2D([], [], color="#555555", linestyle="-.", label=eps_txt[1]),
        Patch(color="#2ca02c", alpha=0.12, label="accepted band (if $C_1 > 0$)"),
    ]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=5 if len(attacks) > 1 else 3,
        fontsize=9,
        frameon=False,
    )
    labels = sorted({chosen[a][0].aggregator for a in attacks}, key=aggregator_sort_key)
    n_honest = f"{clients} honest" if clients is not None else "all honest"
    fig.suptitle(
        f"{', '.join(aggregator_name(g) for g in labels)}: "
        rf"$C_1 \times C_2$ per client-round ({n_honest} clients drawn)",
        fontsize=10,
    )
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def table_rows(path: Path, seeds: list[int] | None = None) -> list[dict[str, Any]]:
    """Result rows (aggregator, attack, seed, metrics) from sweep.csv or summary.json files;
    with ``seeds``, only the runs of those seeds (an error when none is left)."""
    sweep = path if path.is_file() else path / "sweep.csv"
    if sweep.is_file():
        rows = [dict(r) for r in _read_rows(sweep)]
    else:
        rows = []
        for run in _find_runs(path):
            if run.summary:
                rows.append({**run.summary, "aggregator": run.aggregator, "attack": run.attack,
                             "seed": run.seed})  # fmt: skip
        if not rows:
            raise FileNotFoundError(f"no sweep.csv and no finished runs (summary.json) in {path}")
    if seeds is None:
        return rows
    chosen = [r for r in rows if as_number(r.get("seed")) in seeds]
    if not chosen:
        present = sorted(
            {int(as_number(r.get("seed"))) for r in rows if math.isfinite(as_number(r.get("seed")))}
        )
        raise ValueError(
            f"no finished run with seed {', '.join(map(str, seeds))} under {path} "
            f"(seeds present: {', '.join(map(str, present)) or 'none'})"
        )
    return chosen


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


def attack_summary(per_attack: dict[str, list[float]], attacks: list[str]) -> list[str]:
    """The two ranking cells of a table row: the lowest per-attack mean (with the attack that
    caused it, or how many tie with it as printed) and the mean of the per-attack means; blank
    unless every attack has a value, so a half-run row is not ranked on the attacks it
    happened to face."""
    means = {t: statistics.fmean(v) for t, v in per_attack.items() if v}
    if any(t not in means for t in attacks):
        return ["", ""]
    return [worst_attack(means, attacks), f"{statistics.fmean(means.values()):.3f}"]


def worst_attack(values: dict[str, float], attacks: list[str]) -> str:
    """'0.098 (Adaptive)': the lowest of ``values`` over ``attacks`` and the attack that gave
    it, or how many attacks tie with it as printed ('2 tied', 'all')."""
    worst = min(attacks, key=lambda t: values[t])
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


def invariant_fills(
    present: set[tuple[str, str]], aggs: list[str], attacks: list[str]
) -> dict[tuple[str, str], str]:
    """``{(aggregator, attack): attack whose run stands for it}`` for the attacked cells an
    attack-invariant aggregator was not run under (its first attacked run, in column order)."""
    fills: dict[tuple[str, str], str] = {}
    for a in aggs:
        if _key(a) not in ATTACK_INVARIANT:
            continue
        ran = [t for t in attacks if t != "none" and (a, t) in present]
        if not ran:
            continue
        for t in attacks:
            if t != "none" and (a, t) not in present:
                fills[(a, t)] = ran[0]
    return fills


def fill_invariant(cells: dict, aggs: list[str], attacks: list[str]) -> dict[tuple[str, str], str]:
    """Give ``cells`` (keyed by ``(aggregator, attack)``) the :func:`invariant_fills` entries,
    each the value of its source run; returns the fills."""
    fills = invariant_fills(set(cells), aggs, attacks)
    for cell, source in fills.items():
        cells[cell] = cells[(cell[0], source)]
    return fills


def accuracy_table(
    path: str | Path, metric: str = "final_test_accuracy", seeds: list[int] | None = None
) -> str:
    """Markdown tables: ``metric`` per aggregator x attack (mean ± std), then mean TPR/FPR.

    With ``seeds``, only those seeds' runs count. A cell with fewer seeds than the table's
    fullest cell says so (``(n=1)``), and a ranking taken over cells with different numbers
    of seeds is starred: while a multi-seed grid is still running, its rows are not yet
    comparable, and ``seeds`` restricts the table to the seeds every cell has."""
    p = Path(path)
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
    cells: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if not math.isfinite(as_number(r.get(metric))):
            continue  # a run without the metric is no cell (as on the heat-map)
        c = cells[(str(r["aggregator"]), str(r["attack"]))]
        for k in (metric, "mean_tpr", "mean_fpr"):
            v = as_number(r.get(k))
            if math.isfinite(v):
                c[k].append(v)
    aggs = sorted({a for a, _ in cells}, key=aggregator_sort_key)
    attacks = sorted({t for _, t in cells}, key=attack_sort_key)
    cols = [ATTACK_SHORT.get(t, t.replace("_", " ")) for t in attacks]
    fills = fill_invariant(cells, aggs, attacks)
    n_seeds = max(len(c[metric]) for c in cells.values())
    uneven = any(0 < len(c[metric]) < n_seeds for c in cells.values())

    def cell_text(values: list[float]) -> str:
        short = 0 < len(values) < n_seeds
        return format_mean_std(values) + (f" (n={len(values)})" if short else "")

    def shown(a: str, t: str) -> str:
        if (a, t) not in cells:
            return ""
        return cell_text(cells[(a, t)][metric]) + (" (=)" if (a, t) in fills else "")

    body = [[aggregator_name(a)] + [shown(a, t) for t in attacks] for a in aggs]
    header = ["Aggregator", *cols]
    attacked = [t for t in attacks if t != "none"]
    mixed = False
    if len(attacked) >= 2:
        header += ["Worst attack", "Mean under attack"]
        for a, row in zip(aggs, body, strict=True):
            per_attack = {t: cells[(a, t)][metric] for t in attacked if (a, t) in cells}
            ranks = attack_summary(per_attack, attacked)
            if ranks[0] and len({len(v) for v in per_attack.values()}) > 1:
                ranks = [f"{r} *" for r in ranks]
                mixed = True
            row += ranks
    note = f"{metric} (mean ± std over seeds)" if n_seeds > 1 else metric
    text = f"**{note}**\n\n" + markdown_table(header, body)
    if fills:
        sources = sorted({(a, src) for (a, _), src in fills.items()})
        text += (
            "\n\n(=): "
            + "; ".join(
                f"{aggregator_name(a)} never reads a Byzantine update, so every attack gives it "
                f"the same run; it was run under {ATTACK_SHORT.get(src, src)}, shown for the others"
                for a, src in sources
            )
            + "."
        )
    if any((a, t) not in cells for a in aggs for t in attacks):
        text += (
            "\n\nBlank: no run of that pair (a sweep entry limited to some attacks, such as "
            "OracleSGD's in the leaderboards, or a grid still running)."
        )
    if uneven:
        text += (
            f"\n\n(n=k): mean over k seeds, where the fullest cells have {n_seeds}."
            + (" \\*: worst and mean over cells with different numbers of seeds." if mixed else "")
            + " `--seeds` limits the table to the seeds every cell has."
        )

    def rejects(a: str) -> bool:
        vals = [v for (g, _), c in cells.items() if g == a for k in ("mean_tpr", "mean_fpr")
                for v in c[k]]  # fmt: skip
        return any(v > 0 for v in vals)

    rejecting = [a for a in aggs if rejects(a)]
    if rejecting:
        det = []
        for a in rejecting:
            row = [aggregator_name(a)]
            for t in attacks:
                c = cells.get((a, t))
                if c is None:
                    row.append("")
                    continue
                tpr = f"{statistics.fmean(c['mean_tpr']):.3f}" if c["mean_tpr"] else "–"
                fpr = f"{statistics.fmean(c['mean_fpr']):.3f}" if c["mean_fpr"] else "–"
                row.append(f"{tpr} / {fpr}" + (" (=)" if (a, t) in fills else ""))
            det.append(row)
        text += "\n\n**mean TPR / FPR (Byzantine rejected / honest rejected)**\n\n"
        text += markdown_table(["Aggregator", *cols], det)
    machines = machine_note(rows)
    return text + (f"\n\n{machines}" if machines else "") + "\n"


def heatmap_grid(
    rows: list[dict[str, Any]], metric: str = "final_test_accuracy"
) -> tuple[list[str], list[str], list[list[float]]]:
    """Rows (aggregator labels), columns (attack labels, then ``"worst"`` when two or more
    attacks other than ``none`` are present) and the ``metric`` means over seeds (NaN where a
    cell has no run; an attack-invariant aggregator's attacked cells all show its attacked
    run, :func:`invariant_fills`; the worst column is NaN until the row has faced every
    attack)."""
    cells: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        v = as_number(r.get(metric))
        if math.isfinite(v):
            cells[(str(r["aggregator"]), str(r["attack"]))].append(v)
    if not cells:
        raise ValueError(f"metric {metric!r} not found in the results")
    aggs = sorted({a for a, _ in cells}, key=aggregator_sort_key)
    attacks = sorted({t for _, t in cells}, key=attack_sort_key)
    fill_invariant(cells, aggs, attacks)
    grid = [[statistics.fmean(cells[(a, t)]) if (a, t) in cells else math.nan for t in attacks]
            for a in aggs]  # fmt: skip
    attacked = [j for j, t in enumerate(attacks) if t != "none"]
    if len(attacked) < 2:
        return aggs, attacks, grid
    for row in grid:
        values = [row[j] for j in attacked]
        row.append(min(values) if all(math.isfinite(v) for v in values) else math.nan)
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
    im = ax.imshow(grid, cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
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
    fills = invariant_fills(set(counts), aggs, [t for t in attacks if t != "worst"])
    for cell, source in fills.items():
        counts[cell] = counts[(cell[0], source)]
    fullest = max(counts.values())
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if math.isfinite(v):
                k = counts.get((aggs[i], attacks[j]), fullest)  # "worst": no count of its own
                filled = (aggs[i], attacks[j]) in fills
                ax.text(j, i, f"{v:.3f}" + (f"\nn={k}" if k < fullest else ""), ha="center",
                        va="center", fontsize=8 if k == fullest else 7,
                        color="white" if v < lo + 0.6 * (hi - lo) else "black",
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
