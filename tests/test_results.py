"""The committed results (results/leaderboard/<grid>/<cell>/, results/hardening/<grid>/<cell>/)
are what the tables in docs/leaderboard.md and docs/label-flip.md are drawn from: every finished
run must belong to its grid's current config (a config edited after the runs makes them stale,
and a stale run would be read as a result of the new config), and its summary must agree with
its own metrics."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import diversefl
from diversefl.sweep import finished_summary, load_sweep

ROOT = Path(__file__).resolve().parents[1] / "results"
CONFIGS = Path(diversefl.__file__).parent / "configs"
# results/hardening/<dir> -> configs/hardening/<config>.toml (docs/label-flip.md's tables);
# results/leaderboard/<grid> has the config of its own name
HARDENING = {
    "dirichlet": "attacks-dirichlet",
    "sorted": "attacks-sorted",
    "label-flip": "label-flip-spread",
    "sample-size": "sample-size",
}


def _grids(kind: str) -> list[Path]:
    where = ROOT / kind
    return sorted(p for p in where.iterdir() if p.is_dir()) if where.is_dir() else []


GRIDS = _grids("leaderboard") + _grids("hardening")


def _config(grid: Path) -> Path:
    name = HARDENING.get(grid.name, grid.name) if grid.parent.name == "hardening" else grid.name
    return CONFIGS / grid.parent.name / f"{name}.toml"


def test_every_results_grid_has_its_config():
    for grid in GRIDS:
        assert _config(grid).is_file(), f"{grid} has no config {_config(grid)}"


@pytest.mark.parametrize("grid", GRIDS, ids=lambda p: f"{p.parent.name}/{p.name}")
@pytest.mark.slow  # 2 s or more on a 2-core CPU
def test_committed_runs_belong_to_the_current_grid(grid: Path):
    cells = {c.dirname: c for c in load_sweep(_config(grid))}
    finished = [d for d in sorted(grid.iterdir()) if (d / "summary.json").is_file()]
    if not finished:
        pytest.skip(f"no finished run in {grid} yet")
    listed = {}
    if (grid / "sweep.csv").is_file():
        with (grid / "sweep.csv").open() as fh:
            listed = {r["run_dir"]: r for r in csv.DictReader(fh)}
    for name, row in listed.items():  # --table reads sweep.csv: no row without its run
        assert name in cells, f"sweep.csv of {grid.name} lists {name}, not a cell of the config"
        assert (grid / name / "summary.json").is_file(), f"sweep.csv lists {name}: no summary"
        assert (row["aggregator"], row["attack"], int(row["seed"])) == (
            cells[name].aggregator, cells[name].attack, cells[name].seed
        )  # fmt: skip
    for run in finished:
        assert run.name in cells, f"{run} is not a cell of {grid.name}.toml"
        cell = cells[run.name]
        summary = finished_summary(cell, run)  # raises when the saved config differs
        assert summary is not None
        with (run / "metrics.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert int(rows[-1]["round"]) == cell.config.rounds == summary["rounds"]
        assert float(rows[-1]["test_accuracy"]) == pytest.approx(summary["final_test_accuracy"])
        best = max(float(r["test_accuracy"]) for r in rows)
        assert best == pytest.approx(summary["best_test_accuracy"])
        assert summary["seed"] == cell.seed and summary["aggregator"] == cell.config.aggregator.name
        if run.name in listed:  # sweep.csv, which --table reads, says the same
            assert float(listed[run.name]["final_test_accuracy"]) == pytest.approx(
                summary["final_test_accuracy"]
            )
