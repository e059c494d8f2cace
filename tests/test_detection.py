"""The detection report: accuracy against OracleSGD and the C1/C2 pass rates, checked on a
hand-written sweep directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diversefl.cli import main
from diversefl.experiments.detection import (
    detection_table,
    escape_profile,
    escapes_section,
    per_client_table,
    read_sweep,
    spread_table,
)


def _run(
    root: Path,
    name: str,
    acc: float,
    tpr,
    fpr,
    decisions: list[tuple] | None,
    header: str = "round,client,byzantine,accepted,c1,c2",
) -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "summary.json").write_text(
        json.dumps(
            {"final_test_accuracy": acc, "mean_tpr": tpr, "mean_fpr": fpr, "byzantine_ids": [1]}
        )
    )
    (d / "config.toml").write_text('[aggregator]\nname = "diversefl"\neps1 = 0.5\neps2 = 2.0\n')
    if decisions is not None:
        lines = [header]
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


def _cells(table: str, aggregator: str) -> list[str]:
    row = next(line for line in table.splitlines() if f"| {aggregator} |" in line)
    return [c.strip() for c in row.strip("|").split("|")]


def _spread_sweep(root: Path) -> None:
    """Three seeds of oracle, dfl and mean under one attack. dfl: accuracy 0.88 / 0.81 / 0.65
    against the oracle's 0.90 / 0.80 / 0.70 (gaps -2, +1, -5 points), TPR 1.0 / 0.75 / 0.9,
    FPR 0.0 / 0.1 / 0.05. mean records no TPR. Seed 1 of dfl (its worst TPR) has decisions:
    Byzantine client 1 accepted in round 2 (1 of 4), client 2 in rounds 1 and 3 (2 of 4) at
    cosines 0.2 and 0.4."""
    dec = [
        (1, 0, 0, 1, 1.0, 1.0, 0.9),
        (1, 1, 1, 0, -1.0, 1.0, -0.5),
        (1, 2, 1, 1, 1.0, 1.0, 0.2),
        (2, 1, 1, 1, 1.0, 1.0, 0.1),
        (2, 2, 1, 0, -1.0, 1.0, -0.3),
        (3, 1, 1, 0, -1.0, 1.0, -0.4),
        (3, 2, 1, 1, 1.0, 1.0, 0.4),
        (4, 1, 1, 0, -1.0, 1.0, -0.6),
        (4, 2, 1, 0, -1.0, 1.0, -0.7),
    ]
    header = "round,client,byzantine,accepted,c1,c2,cos"
    for seed, (oracle, acc, tpr, fpr, mean) in enumerate(
        [(0.90, 0.88, 1.0, 0.0, 0.5), (0.80, 0.81, 0.75, 0.1, 0.4), (0.70, 0.65, 0.9, 0.05, 0.3)]
    ):
        _run(root, f"oracle__flip__seed{seed}", oracle, 1.0, 0.0, None)
        _run(root, f"dfl__flip__seed{seed}", acc, tpr, fpr, dec if seed == 1 else None, header)
        _run(root, f"mean__flip__seed{seed}", mean, None, None, None)


def test_spread_table_median_and_worst_seed_by_hand(tmp_path: Path):
    _spread_sweep(tmp_path)
    runs = read_sweep(tmp_path)
    table = spread_table(runs)
    assert "| oracle |" not in table
    # TPR sorted 0.75 0.9 1.0: median 0.900, worst 0.750 in seed 1; gaps -5 -2 +1: median -2.0,
    # worst -5.0 in seed 2; FPR 0.0 0.05 0.1: median 0.050, max 0.100 in seed 1.
    assert _cells(table, "dfl") == [
        "flip", "dfl", "3", "0.900", "0.750 (seed 1)", "-2.0", "-5.0 (seed 2)",
        "0.050", "0.100 (seed 1)",
    ]  # fmt: skip
    # mean: no TPR / FPR recorded; gaps -40 -40 -40 points, ties go to the lowest seed
    assert _cells(table, "mean") == [
        "flip", "mean", "3", "-", "-", "-40.0", "-40.0 (seed 0)", "-", "-",
    ]  # fmt: skip
    # worst seed 1: client 2 (2 of 4 rounds) escapes more than client 1 (1 of 4); accepted in
    # rounds 1 and 3 of 4, the first 10% being round 1 -> 0.50 early; median cos (0.2+0.4)/2.
    assert escapes_section(runs).splitlines()[2] == (
        "- flip / dfl, seed 1 (TPR 0.750): client 2 accepted in 2 of 4 rounds (0.50), first in "
        "round 1, last in round 3; 0.50 of them in the first 10% of the run (rounds <= 1 of 4); "
        "over those rounds median cos +0.300 (no cosine threshold in decisions.csv)."
    )


def test_escapes_only_below_tpr_one_and_without_decisions(tmp_path: Path):
    _run(tmp_path, "dfl__flip__seed0", 0.9, 1.0, 0.0, None)
    _run(tmp_path, "dfl__flip__seed1", 0.9, 1.0, 0.0, None)
    assert escapes_section(read_sweep(tmp_path)).startswith("No escapes")
    _run(tmp_path, "krum__flip__seed0", 0.9, 0.5, 0.0, None)
    section = escapes_section(read_sweep(tmp_path))
    assert "krum" in section and "dfl" not in section
    assert "seed 0 (TPR 0.500): no decisions.csv" in section


def _escape_run(root: Path, threshold: str) -> Path:
    """20 rounds; Byzantine client 1 accepted in rounds 1, 2, 7 and 15 at cosines 0.10, 0.30,
    0.20, 0.05 with thresholds 0.00, 0.10, 0.04, 0.02; rejected elsewhere at cosine -0.5 and
    threshold 0.9 (which must not count). ``threshold``: "values", "empty" cells or "absent"."""
    accepted = {1: (0.10, 0.00), 2: (0.30, 0.10), 7: (0.20, 0.04), 15: (0.05, 0.02)}
    header = "round,client,byzantine,accepted,c1,c2,cos"
    header += "" if threshold == "absent" else ",threshold"
    rows = []
    for rnd in range(1, 21):
        cos, thr = accepted.get(rnd, (-0.5, 0.9))
        cells: dict[str, tuple] = {"values": (thr,), "empty": ("",), "absent": ()}
        rows.append((rnd, 0, 0, 1, 1.0, 1.0, 0.95) + cells[threshold])
        rows.append((rnd, 1, 1, int(rnd in accepted), 1.0, 1.0, cos) + cells[threshold])
    _run(root, "dfl__flip__seed0", 0.9, 0.8, 0.0, rows, header)
    return root / "dfl__flip__seed0"


def test_escape_profile_by_hand(tmp_path: Path):
    run = _escape_run(tmp_path, "values")
    p = escape_profile(run, 1)
    assert p.accepted_rounds == (1, 2, 7, 15) and p.rounds_seen == 20 and p.n_rounds == 20
    assert (p.first_round, p.last_round, p.early_cutoff) == (1, 15, 2)
    assert p.early_share == 0.5  # rounds 1 and 2 of the four fall in the first 10% (<= 2)
    assert p.median_cos == pytest.approx(0.15)  # (0.10 + 0.20) / 2
    assert p.median_threshold == pytest.approx(0.03)  # (0.02 + 0.04) / 2
    assert escape_profile(run, 5).accepted_rounds == ()  # a client with no rows
    line = escapes_section(read_sweep(tmp_path)).splitlines()[2]
    assert line.endswith("median cos +0.150 against threshold 0.030.")
    assert "client 1 accepted in 4 of 20 rounds (0.20), first in round 1, last in round 15" in line


@pytest.mark.parametrize("threshold", ["absent", "empty"])
def test_escape_profile_without_threshold(tmp_path: Path, threshold: str):
    """A rule with no cosine threshold logs no threshold column (or empty cells): cos only."""
    p = escape_profile(_escape_run(tmp_path, threshold), 1)
    assert p.median_threshold is None and p.median_cos == pytest.approx(0.15)
    line = escapes_section(read_sweep(tmp_path)).splitlines()[2]
    assert line.endswith("median cos +0.150 (no cosine threshold in decisions.csv).")


def test_escape_profile_bad_files(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no decisions.csv in"):
        escape_profile(tmp_path, 1)
    (tmp_path / "decisions.csv").write_text("round,accepted\n1,1\n")
    with pytest.raises(ValueError, match="missing column.s. client"):
        escape_profile(tmp_path, 1)


def test_cli_spread(tmp_path: Path, capsys):
    _spread_sweep(tmp_path / "sweep")
    assert main(["detection", str(tmp_path / "sweep"), "--spread"]) == 0
    out = capsys.readouterr().out
    assert "| flip | dfl | 3 | 0.900 | 0.750 (seed 1) | -2.0 | -5.0 (seed 2) |" in out
    assert "Escapes in each worst seed" in out and "client 2 accepted in 2 of 4 rounds" in out
    assert "C1 passes" not in out  # instead of the usual table
    md = tmp_path / "spread.md"
    assert main(["detection", str(tmp_path / "sweep"), "--spread", "--out", str(md)]) == 0
    assert md.read_text().startswith("| attack | aggregator | seeds | TPR median | TPR worst |")


def test_a_negative_that_rounds_to_zero_is_shown_as_zero():
    from diversefl.experiments.detection import _fmt

    assert _fmt(-0.04, "+.1f") == "+0.0" and _fmt(-0.06, "+.1f") == "-0.1"
    assert _fmt(0.9996, ".3f") == "1.000" and _fmt(-0.0004, ".3f") == "0.000"
