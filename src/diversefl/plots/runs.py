"""Finding and reading run directories (metrics.csv, config.toml, summary.json) and the
result rows of a sweep.csv."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_RUN_DIR_RE = re.compile(r"^(?P<agg>.+?)__(?P<attack>.+)__seed(?P<seed>-?\d+)$")


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
    cfg = _read_config(d)
    summary: dict[str, Any] = {}
    if (d / "summary.json").exists():
        try:
            summary = json.loads((d / "summary.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
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


def _read_config(run_dir: Path) -> dict[str, Any]:
    """A run directory's config.toml as a dict; empty when it is missing or unreadable."""
    try:
        return tomllib.loads((run_dir / "config.toml").read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def _rule_of(cfg: dict[str, Any]) -> str | None:
    """The aggregator rule a run used (its config's ``aggregator.name``), whatever its label
    in the sweep; None when the config has none."""
    section = cfg.get("aggregator")
    rule = section.get("name") if isinstance(section, dict) else None
    return str(rule) if rule else None


def table_rows(path: Path, seeds: list[int] | None = None) -> list[dict[str, Any]]:
    """Result rows (aggregator, attack, seed, metrics) from sweep.csv or summary.json files,
    with ``rule`` (the aggregator's registry name from the run's config.toml) where the run's
    files are there; with ``seeds``, only the runs of those seeds (an error when none is
    left)."""
    sweep = path if path.is_file() else path / "sweep.csv"
    if sweep.is_file():
        rows: list[dict[str, Any]] = [dict(r) for r in _read_rows(sweep)]
        for r in rows:
            rule = _rule_of(_read_config(sweep.parent / r["run_dir"])) if r.get("run_dir") else None
            if rule:
                r["rule"] = rule
    else:
        rows = []
        for run in _find_runs(path):
            if run.summary:
                rule = _rule_of(run.config)
                rows.append({**run.summary, "aggregator": run.aggregator, "attack": run.attack,
                             "seed": run.seed, **({"rule": rule} if rule else {})})  # fmt: skip
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
