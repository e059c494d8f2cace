"""The detection report: accuracy against OracleSGD and the C1/C2 pass rates, checked on a
hand-written sweep directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diversefl.cli import main
from diversefl.experiments.detection import detection_table, per_client_table, read_sweep


def _run(root: Path, name: str, acc: float, tpr, fpr, decisions: list[tuple] | None) -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "summary.json").write_text(
        json.dumps(
            {"final_test_accuracy": acc, "mean_tpr": tpr, "mean_fpr": fpr, "byzantine_ids": [1]}
        )
    )
    (d / "config.toml").write_text('[aggregator]\nname = "diversefl"\neps1 = 0.5\neps2 = 2.0\n')
    if decisions is not None:
        lines = ["round,client,byzantine,accepted,c1,c2"]
        lines += [",".join(str(v) for v in row) for row in decisions]
        (d / "decisions.csv").write_text("\n".join(lines) + "\n")


def test_pass_rates_and_gap_to_oracle(tmp_path: Path):
    # Byzantine client 1 over four rounds: (c1, c2) = (+, 1.0) passes both; (+, 3.0) passes C1
    # only; (-, 1.0) passes C2 only; (-, 0.1) passes neither -> C1 2/4, C2 2/4, accepted 1/4.
    dec = [
        (1, 0, 0, 1, 1.0, 1.0),
        (1, 1, 1, 1, 1.0, 1.0),
        (2, 1, 1, 0, 1.0, 3.0),
        (3, 1, 1, 0, -1.0, 1.0),
        (4, 1, 1, 0, -1.0, 0.1),
    ]
    _run(tmp_path, "oracle__flip__seed0", 0.90, 1.0, 0.0, None)
    _run(tmp_path, "oracle__flip__seed1", 0.80, 1.0, 0.0, None)
    _run(tmp_path, "dfl__flip__seed0", 0.85, 0.75, 0.0, dec)
    _run(tmp_path, "dfl__flip__seed1", 0.79, 0.75, 0.1, dec)
    runs = read_sweep(tmp_path)
    r = next(r for r in runs if r.aggregator == "dfl" and r.seed == 0)
    assert r.c1_pass == 0.5 and r.c2_pass == 0.5
    assert r.per_client_pass == {1: 0.25}
    table = detection_table(runs)
    row = next(line for line in table.splitlines() if "| dfl |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    # gaps -5 and -1 points -> mean -3.0
    assert cells[3] == "0.820 ± 0.042" and cells[4] == "-3.0"
    assert cells[5] == "0.750 ± 0.000" and cells[7] == "0.500 ± 0.000"
    out = tmp_path / "t.md"
    assert main(["detection", str(tmp_path), "--out", str(out), "--per-client", "dfl"]) == 0
    assert "1: 0.25" in out.read_text()
    with pytest.raises(ValueError, match=r"--per-client nosuch: no run of that aggregator.*dfl"):
        per_client_table(runs, "nosuch")


def test_empty_directory_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no finished runs"):
        read_sweep(tmp_path)


def _cos_run(root: Path, name: str, cosines: list[float]) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"final_test_accuracy": 0.9, "mean_fpr": 0.0}))
    (d / "config.toml").write_text('[aggregator]\nname = "diversefl"\n')
    lines = ["round,client,byzantine,accepted,c1,c2,cos"]
    lines += [f"{k + 1},0,0,1,1.0,1.0,{c}" for k, c in enumerate(cosines)]
    lines += ["1,1,1,0,-1.0,1.0,-0.9"]  # a Byzantine row: not an honest cosine
    (d / "decisions.csv").write_text("\n".join(lines) + "\n")
    return d


def test_honest_cosine_table_by_hand(tmp_path: Path, capsys):
    from diversefl.experiments.detection import cosine_table, percentile

    # honest cosines 0.2 0.4 0.6 0.8 1.0: median 0.6; p1 = 0.2 + 0.04 * (0.4 - 0.2) = 0.208;
    # p5 = 0.2 + 0.2 * 0.2 = 0.24; below 0.3 / 0.5 / 0.7: 1, 2, 3 of 5.
    run = _cos_run(tmp_path, "dfl__none__seed0", [0.8, 0.2, 1.0, 0.6, 0.4])
    runs = read_sweep(run)  # a run directory works as well as a sweep directory
    assert len(runs) == 1 and sorted(runs[0].honest_cos) == [0.2, 0.4, 0.6, 0.8, 1.0]
    row = cosine_table(runs).splitlines()[2]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["none", "dfl", "1", "0.208", "0.240", "0.600", "0.200", "0.400", "0.600"]
    assert percentile([], 50) != percentile([], 50)  # NaN for no values
    assert main(["detection", str(run), "--cosines"]) == 0
    assert "| 0.208 | 0.240 | 0.600 |" in capsys.readouterr().out


def test_paper_rule_logs_cosines(tmp_path: Path):
    """min_cosine = 0 (the paper's rule) still writes each update's cosine to decisions.csv."""
    from conftest import tiny_config

    from diversefl.api import run

    cfg = tiny_config(rounds=3, aggregator={"name": "diversefl"})
    cfg["eval"] = {**cfg.get("eval", {}), "decisions": True}
    run(cfg, out=tmp_path / "r")
    header = (tmp_path / "r" / "decisions.csv").read_text().splitlines()[0].split(",")
    assert "cos" in header
    assert read_sweep(tmp_path / "r")[0].honest_cos  # detection reads them
