"""`diversefl plot DIR --seed-spread`: one seed against the mean over seeds, per defense, on a
hand-made sweep.csv whose every figure is computed by hand below."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from diversefl.cli import main
from diversefl.experiments.seed_spread import seed_spread_table

# (aggregator, attack) -> final accuracy for seeds 0, 1, 2
GRID = {
    ("mean", "none"): (0.90, 0.92, 0.94),
    ("mean", "gaussian"): (0.10, 0.40, 0.70),  # mean 0.40, std 0.30; seed 0 is 0.30 away
    ("mean", "sign_flip"): (0.20, 0.20, 0.20),  # mean 0.20, std 0
    ("krum", "none"): (0.50, 0.50, 0.50),
    ("krum", "gaussian"): (0.30, 0.30, 0.30),
    ("krum", "sign_flip"): (0.30, 0.36, 0.42),  # mean 0.36, std 0.06
    ("median", "none"): (0.8, 0.8, None),  # seed 2 missing: left out
    ("median", "gaussian"): (0.7, 0.7, 0.7),
    ("median", "sign_flip"): (0.6, 0.6, 0.6),
    ("oracle", "none"): (0.9, 0.9, 0.9),  # no gaussian run, but attack-invariant: filled
    ("oracle", "sign_flip"): (0.85, 0.85, 0.85),
    ("fltrust", "none"): (0.6, 0.6, 0.6),  # every seed, but no gaussian run: limited, left out
    ("fltrust", "sign_flip"): (0.5, 0.5, 0.5),
}


def write_sweep(tmp_path: Path) -> Path:
    with (tmp_path / "sweep.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["aggregator", "attack", "seed", "final_test_accuracy"])
        for (agg, atk), values in GRID.items():
            for seed, v in enumerate(values):
                if v is not None:
                    w.writerow([agg, atk, seed, v])
    return tmp_path


def rows_of(text: str) -> dict[str, list[str]]:
    out = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| Defense"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0]] = cells[1:]
    return out


def test_seed_spread_against_hand_figures(tmp_path: Path) -> None:
    rows = rows_of(seed_spread_table(write_sweep(tmp_path)))
    assert rows["Mean"] == [
        "0.100 (Gaussian)",  # seed 0: min(0.10, 0.20)
        "0.200 (Sign flip)",  # means: gaussian 0.40, sign flip 0.20
        "0.150",  # (0.10 + 0.20) / 2
        "0.300",  # (0.40 + 0.20) / 2
        "0.300 (Gaussian)",  # stdev(0.1, 0.4, 0.7)
        "0.300 (Gaussian)",  # |0.10 - 0.40|
    ]
    assert rows["Krum"] == [
        "0.300 (all)",  # seed 0: gaussian 0.30 = sign flip 0.30
        "0.300 (Gaussian)",  # means: 0.30 and 0.36
        "0.300",
        "0.330",
        "0.060 (Sign flip)",
        "0.060 (Sign flip)",
    ]
    assert "Median" not in rows  # one cell lacks seed 2


def test_seed_spread_reference_seed_and_left_out(tmp_path: Path) -> None:
    text = seed_spread_table(write_sweep(tmp_path), seed=2)
    assert "seed 2 against the mean over seeds 0, 1, 2" in text
    assert rows_of(text)["Mean"][0] == "0.200 (Sign flip)"  # seed 2: 0.70 vs 0.20
    assert rows_of(text)["Mean"][5] == "0.300 (Gaussian)"  # |0.70 - 0.40|
    assert "Not all seeds finished yet (left out): Median." in text
    assert "Run under only some of the attacks" in text and "compare): FLTrust." in text
    assert "FLTrust" not in rows_of(text)
    # OracleSGD's sign-flip run stands for its Gaussian cell too
    assert rows_of(text)["OracleSGD"][:4] == ["0.850 (all)", "0.850 (all)", "0.850", "0.850"]


def test_seed_spread_names_ties_as_the_table_does(tmp_path: Path) -> None:
    """Two of three attacks equal as printed: '2 tied', as in `--table`'s worst column."""
    lines = ["aggregator,attack,seed,final_test_accuracy"]
    for seed, (a, b, c) in enumerate([(0.30, 0.3004, 0.9), (0.50, 0.40, 0.9)]):
        lines += [
            f"mean,gaussian,{seed},{a}",
            f"mean,sign_flip,{seed},{b}",
            f"mean,alie,{seed},{c}",
        ]
    (tmp_path / "sweep.csv").write_text("\n".join(lines) + "\n")
    # seed 0: 0.300 and 0.300 as printed; means: gaussian 0.40, sign flip 0.3502, ALIE 0.9
    assert rows_of(seed_spread_table(tmp_path))["Mean"][:2] == [
        "0.300 (2 tied)",
        "0.350 (Sign flip)",
    ]


def test_seed_spread_errors_name_the_problem(tmp_path: Path) -> None:
    write_sweep(tmp_path)
    with pytest.raises(ValueError, match="seed 5 has no runs"):
        seed_spread_table(tmp_path, seed=5)
    one = tmp_path / "one"
    one.mkdir()
    (one / "sweep.csv").write_text("aggregator,attack,seed,final_test_accuracy\nmean,none,0,0.9\n")
    with pytest.raises(ValueError, match="at least two seeds"):
        seed_spread_table(one)


def test_plot_seed_spread_cli(tmp_path: Path, capsys) -> None:
    write_sweep(tmp_path)
    assert main(["plot", str(tmp_path), "--seed-spread"]) == 0
    assert "| Krum | 0.300 (all) |" in capsys.readouterr().out
    assert main(["plot", str(tmp_path), "--seed-spread", "one"]) == 2
    assert "--seed-spread takes a seed number" in capsys.readouterr().err
    assert main(["plot", str(tmp_path), "--seed-spread", "--seeds", "0"]) == 2
    assert "--seeds 0 does not apply" in capsys.readouterr().err


def test_seed_spread_worst_is_the_highest_where_lower_is_better(tmp_path: Path) -> None:
    """Backdoor accuracy: the worst attack is the highest, as in `--table`."""
    lines = ["aggregator,attack,seed,final_backdoor_accuracy",
             "mean,alie,0,0.9", "mean,alie,1,0.8", "mean,ipm,0,0.1", "mean,ipm,1,0.2"]  # fmt: skip
    (tmp_path / "sweep.csv").write_text("\n".join(lines) + "\n")
    rows = rows_of(seed_spread_table(tmp_path, metric="final_backdoor_accuracy"))
    assert rows["Mean"][:2] == ["0.900 (ALIE)", "0.850 (ALIE)"]  # seed 0; mean over seeds
