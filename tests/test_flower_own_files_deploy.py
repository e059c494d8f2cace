"""A real-process localhost federation (SuperLink + one SuperNode process per hospital) where
every node reads only its own CSV and the server is given no data at all: one sign-flipping
hospital is caught by DiverseFL and the run equals the simulator's per-client run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from test_flower import _leftovers, needs_flwr
from test_flower_own_files import SIZES, raw_config, rows, write_hospital

from diversefl.config import make_config
from diversefl.engine.runner import train


@needs_flwr
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_localhost_hospitals_each_read_their_own_csv(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    homes = []
    for name, size, classes in SIZES:  # each hospital's file in its own folder
        home = tmp_path / f"hospital_{name}"
        home.mkdir()
        write_hospital(home / "patients.csv", rng, size, classes)
        homes.append(home / "patients.csv")
    folder = tmp_path / "pooled-view"  # the simulator's view: one folder of the four files
    folder.mkdir()
    for j, path in enumerate(homes):
        (folder / f"client_{j}.csv").write_bytes(path.read_bytes())
    raw = raw_config(folder, test_fraction=0.25, standardize="samples")
    raw.update(rounds=6, eval={"every": 3})
    config = tmp_path / "hospitals.toml"
    config.write_text(tomli_w.dumps(raw))
    monkeypatch.setenv("DIVERSEFL_DATA", str(tmp_path / "no-such-dir"))
    from diversefl.flower.deploy import deploy_local

    work = tmp_path / "work"
    try:
        res = deploy_local(
            config, None, tmp_path / "out", data_dir=tmp_path / "no-such-dir",
            node_data=[str(p) for p in homes], workdir=work, timeout=780,
        )  # fmt: skip
    finally:
        assert _leftovers(work) == [], "processes survived the deployment"
    assert res.ok, res.status
    s = res.summary
    assert s["byzantine_ids"] == [1] and s["mean_tpr"] == 1.0
    assert s["flower"]["test_set"].startswith("federated")
    assert s["flower"]["excluded"] == {} and len(set(s["flower"]["node_ids"])) == 4
    assert set(s["flower"]["samples"]["sha256"]) == {"0", "1", "2", "3"}
    ref = train(make_config(raw), tmp_path / "ref", progress=False)
    got, want = rows(res.out / "decisions.csv"), rows(tmp_path / "ref" / "decisions.csv")
    assert got == want
    acc = [r["test_accuracy"] for r in rows(res.out / "metrics.csv")]
    assert acc == [r["test_accuracy"] for r in rows(tmp_path / "ref" / "metrics.csv")]
    assert s["final_test_accuracy"] == ref.summary["final_test_accuracy"]
    with (res.out / "metrics.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 2
    assert not any(p.name == "patients.csv" for p in Path(res.logs).rglob("*"))
