"""Sweeps: grid expansion, one run directory per cell, sweep.csv, skipping finished cells."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import tiny_config

from diversefl.config import ConfigError
from diversefl.sweep import expand, run_sweep


def _grid(**sweep) -> dict:
    raw = tiny_config(rounds=10, attack={"name": "none", "f": 1})
    raw["sweep"] = sweep
    return raw


def test_expand_labels_params_and_overrides():
    cells = expand(
        _grid(
            aggregators=[
                "mean",
                {
                    "label": "dfl-big",
                    "name": "diversefl",
                    "eps2": 3.0,
                    "set": {"clients.sample": 0.5},
                },
            ],
            attacks=["none", {"name": "gaussian", "sigma": 5.0}],
            seeds=[0, 1],
        )
    )
    assert len(cells) == 8
    c = next(c for c in cells if c.aggregator == "dfl-big" and c.attack == "gaussian")
    assert c.config.aggregator.params() == {"eps2": 3.0}
    assert c.config.attack.params() == {"sigma": 5.0} and c.config.attack.f == 1
    assert c.config.clients.sample == 0.5
    assert c.dirname == "dfl-big__gaussian__seed0" or c.dirname == "dfl-big__gaussian__seed1"


def test_bad_cell_fails_up_front():
    with pytest.raises(ConfigError, match="sweep cell bulyan__sign_flip"):
        expand(_grid(aggregators=["bulyan"], attacks=["sign_flip"]))
    with pytest.raises(ConfigError, match="sweep.grid"):
        expand(_grid(grid=[1]))


def test_run_sweep_writes_csv_and_skips_done(tmp_path: Path):
    cells = expand(_grid(aggregators=["mean", "diversefl"], attacks=["sign_flip"]))
    rows = run_sweep(cells, tmp_path, progress=False, echo=lambda m: None)
    assert len(rows) == 2
    with (tmp_path / "sweep.csv").open() as fh:
        saved = list(csv.DictReader(fh))
    assert [r["aggregator"] for r in saved] == ["mean", "diversefl"]
    assert float(saved[1]["mean_tpr"]) == 1.0
    messages = []
    run_sweep(cells, tmp_path, progress=False, echo=messages.append)
    assert all("done already" in m for m in messages)


def test_only_runs_matching_cells_and_csv_keeps_grid_order(tmp_path: Path):
    cells = expand(_grid(aggregators=["mean", "diversefl"], attacks=["none", "sign_flip"]))
    run_sweep(cells, tmp_path, progress=False, echo=lambda m: None, only=["*__sign_flip__*"])
    ran = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert ran == ["diversefl__sign_flip__seed0", "mean__sign_flip__seed0"]
    run_sweep(cells, tmp_path, progress=False, echo=lambda m: None, only=["mean__none*"])
    with (tmp_path / "sweep.csv").open() as fh:
        saved = [(r["aggregator"], r["attack"]) for r in csv.DictReader(fh)]
    assert saved == [("mean", "none"), ("mean", "sign_flip"), ("diversefl", "sign_flip")]
    with pytest.raises(ConfigError, match="--only krum"):
        run_sweep(cells, tmp_path, progress=False, echo=lambda m: None, only=["krum"])


def test_parallel_jobs_give_the_same_numbers_as_serial(tmp_path: Path):
    cells = expand(_grid(aggregators=["mean", "diversefl"], attacks=["sign_flip"]))
    serial = run_sweep(cells, tmp_path / "serial", progress=False, echo=lambda m: None)
    parallel = run_sweep(cells, tmp_path / "par", progress=False, echo=lambda m: None, jobs=2)
    keys = ("aggregator", "attack", "final_test_accuracy", "mean_tpr", "mean_fpr")
    assert [{k: r[k] for k in keys} for r in parallel] == [{k: r[k] for k in keys} for r in serial]
    for cell in cells:
        a = (tmp_path / "serial" / cell.dirname / "metrics.csv").read_text().splitlines()
        b = (tmp_path / "par" / cell.dirname / "metrics.csv").read_text().splitlines()
        # identical numbers apart from the wall-clock column (last)
        assert [r.rsplit(",", 1)[0] for r in a] == [r.rsplit(",", 1)[0] for r in b]
