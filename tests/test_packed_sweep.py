"""Packed federations (`sweep --pack`): members agree with the same runs alone, a pack is
reproducible, resumes from its checkpoints, and unpackable cells run alone."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import tiny_config

from diversefl.api import run
from diversefl.config import make_config
from diversefl.engine.packed import PackedFederation, PackError, pack_key
from diversefl.experiments.packing import Pack, plan_packs, run_pack
from diversefl.experiments.sweep import Cell

ENTRIES = [("mean", "none"), ("median", "label_flip"), ("diversefl", "sign_flip"), ("krum", "alie")]


def _cell(agg: str, atk: str, seed: int = 0, rounds: int = 40, **extra) -> Cell:
    raw = tiny_config(
        rounds=rounds,
        seed=seed,
        clients={"n": 8, "batch": 0.5, "sample": 8},
        attack={"name": atk, "f": 2},
        aggregator={"name": agg},
        name=f"{agg}__{atk}__seed{seed}",
        **extra,
    )
    return Cell(agg, atk, seed, make_config(raw))


def _metrics(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_pack_members_agree_with_runs_alone(tmp_path: Path) -> None:
    cells = [_cell(a, k) for a, k in ENTRIES]
    results = run_pack(Pack(tuple(cells)), tmp_path / "packed")
    assert all(r.summary is not None for r in results)
    for cell in cells:
        alone = run(cell.config, out=tmp_path / "alone" / cell.dirname, progress=False)
        packed = _metrics(tmp_path / "packed" / cell.dirname / "metrics.csv")
        assert [r["round"] for r in packed] == [str(r["round"]) for r in alone.metrics]
        for got, want in zip(packed, alone.metrics, strict=True):
            # float rounding of the wider matmuls only: accuracies within one test example
            assert float(got["test_accuracy"]) == pytest.approx(want["test_accuracy"], abs=2e-3)
            assert float(got["test_loss"]) == pytest.approx(want["test_loss"], rel=1e-3)
        summary = (tmp_path / "packed" / cell.dirname / "summary.json").read_text()
        assert '"pack_size": 4' in summary


def test_pack_is_reproducible(tmp_path: Path) -> None:
    cells = [_cell(a, k) for a, k in ENTRIES[:3]]
    run_pack(Pack(tuple(cells)), tmp_path / "a")
    run_pack(Pack(tuple(cells)), tmp_path / "b")
    for cell in cells:
        a = (tmp_path / "a" / cell.dirname / "metrics.csv").read_bytes()
        b = (tmp_path / "b" / cell.dirname / "metrics.csv").read_bytes()
        assert _drop_seconds(a) == _drop_seconds(b)


def _drop_seconds(data: bytes) -> list[list[str]]:
    rows = list(csv.reader(data.decode().splitlines()))
    keep = [i for i, name in enumerate(rows[0]) if "second" not in name]
    return [[row[i] for i in keep] for row in rows]


def test_pack_resumes_from_checkpoints(tmp_path: Path) -> None:
    """A pack stopped after its round-20 checkpoint and run again ends where one
    uninterrupted pack ends."""
    full = [_cell(a, k, rounds=40) for a, k in ENTRIES[:3]]
    run_pack(Pack(tuple(full)), tmp_path / "full")
    short = [_cell(a, k, rounds=20) for a, k in ENTRIES[:3]]
    run_pack(Pack(tuple(short)), tmp_path / "cut")
    for cell in short:  # as if stopped right after the round-20 checkpoint
        (tmp_path / "cut" / cell.dirname / "summary.json").unlink()
        cfg_path = tmp_path / "cut" / cell.dirname / "config.toml"
        cfg_path.write_text(cfg_path.read_text().replace("rounds = 20", "rounds = 40"))
    packs = plan_packs(full, tmp_path / "cut", 8)
    assert [p.start for p in packs] == [20]
    run_pack(packs[0], tmp_path / "cut")
    for cell in full:
        a = _drop_seconds((tmp_path / "full" / cell.dirname / "metrics.csv").read_bytes())
        b = _drop_seconds((tmp_path / "cut" / cell.dirname / "metrics.csv").read_bytes())
        assert a == b


def test_plan_packs_groups_by_shared_batches(tmp_path: Path) -> None:
    cells = [_cell(a, k) for a, k in ENTRIES] + [
        _cell("mean", "none", seed=1),  # another seed: other batches
        _cell("rsa", "none"),  # a protocol: alone
    ]
    packs = plan_packs(cells, tmp_path, 3)
    sizes = sorted(len(p.cells) for p in packs)
    assert sizes == [1, 1, 1, 3]  # 4 seed-0 cells in packs of 3 and 1; seed 1; rsa
    assert pack_key(cells[-1].config) is None
    with pytest.raises(ValueError, match="at least one run"):
        plan_packs(cells, tmp_path, 0)


def test_auto_packs_are_as_equal_as_the_limit_allows(tmp_path: Path, monkeypatch) -> None:
    from diversefl.experiments import packing

    monkeypatch.setattr(packing, "AUTO_PACK", 3)
    cells = [_cell(a, k) for a, k in ENTRIES]  # 4 runs sharing batches: 2 + 2, not 3 + 1
    packs = plan_packs(cells, tmp_path, "auto")
    assert [len(p.cells) for p in packs] == [2, 2]
    assert [c for p in packs for c in p.cells] == cells  # every cell once, in grid order
    ids = list(range(55))
    for limit, want in ((32, [28, 27]), (16, [14, 14, 14, 13]), (55, [55]), (1, [1] * 55)):
        parts = packing._split(ids, limit, balanced=True)  # type: ignore[arg-type]
        assert [len(q) for q in parts] == want and sum(parts, []) == ids
    assert [len(q) for q in packing._split(ids, 16, balanced=False)] == [16, 16, 16, 7]


def test_pack_refuses_runs_with_other_batches() -> None:
    with pytest.raises(PackError, match="cannot be packed together"):
        PackedFederation([_cell("mean", "none").config, _cell("mean", "none", seed=1).config])


@pytest.mark.slow  # 2 s or more on a 2-core CPU
def test_sweep_command_with_pack(tmp_path: Path) -> None:
    """`diversefl sweep --pack 3` through the command line: every cell of the grid finishes,
    sweep.csv lists them, packed cells say so, rsa (a protocol) runs alone; --jobs 2 runs
    the packs in two processes with the same numbers."""
    import json

    import tomli_w

    from diversefl.cli import main

    raw = tiny_config(clients={"n": 8, "batch": 0.5, "sample": 8}, attack={"name": "none", "f": 2})
    raw["sweep"] = {
        "aggregators": ["mean", "median", "diversefl", "rsa"],
        "attacks": ["none", "sign_flip"],
    }
    path = tmp_path / "grid.toml"
    path.write_text(tomli_w.dumps(raw))
    assert main(["sweep", str(path), "--out", str(tmp_path / "a"), "--pack", "3", "--quiet"]) == 0
    assert main(["sweep", str(path), "--out", str(tmp_path / "b"), "--pack", "3", "--jobs", "2",
                 "--quiet"]) == 0  # fmt: skip
    with (tmp_path / "a" / "sweep.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 8
    sizes = {}
    for run_dir in sorted((tmp_path / "a").glob("*__seed0")):
        summary = json.loads((run_dir / "summary.json").read_text())
        sizes[run_dir.name] = summary.get("pack_size", 1)
        other = tmp_path / "b" / run_dir.name / "metrics.csv"
        assert _drop_seconds((run_dir / "metrics.csv").read_bytes()) == _drop_seconds(
            other.read_bytes()
        )
    assert sizes["rsa__none__seed0"] == 1 and sizes["rsa__sign_flip__seed0"] == 1
    assert sorted(v for k, v in sizes.items() if not k.startswith("rsa")) == [3] * 6
    with pytest.raises(SystemExit):
        main(["sweep", str(path), "--pack", "1"])
