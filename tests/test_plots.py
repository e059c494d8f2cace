"""Figures and tables from small hand-written run directories."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from diversefl.plots import (
    accuracy_table,
    aggregator_name,
    aggregator_sort_key,
    aggregator_style,
    attack_summary,
    heatmap_grid,
    invariant_labels,
    machine_note,
    metric_bars,
    plot_c1c2,
    plot_curves,
    plot_heatmap,
    plot_metric_bars,
    seed_label,
    table_rows,
)

AGGS = ["oracle", "diversefl"]
ATTACKS = ["none", "sign_flip"]
SEEDS = [0, 1]
BYZ = [1, 3]
N_CLIENTS = 6


def _final(agg: str, attack: str, seed: int) -> float:
    """A distinct final accuracy per cell."""
    return round(0.5 + 0.1 * AGGS.index(agg) + 0.05 * ATTACKS.index(attack) + 0.013 * seed, 4)


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def _make_run(root: Path, agg: str, attack: str, seed: int) -> dict:
    d = root / f"{agg}__{attack}__seed{seed}"
    d.mkdir(parents=True)
    final = _final(agg, attack, seed)
    byz = BYZ if attack != "none" else []
    metrics = [
        {
            "round": 10 * (i + 1),
            "test_accuracy": round(final * (i + 1) / 5, 4),
            "test_loss": round(2.0 / (i + 1), 4),
            "n_accepted": N_CLIENTS - len(byz),
            "tpr": 1.0 if byz else "",
            "fpr": 0.0,
            "lr": 0.1,
            "seconds": 0.1 * (i + 1),
        }
        for i in range(5)
    ]
    _write_csv(d / "metrics.csv", list(metrics[0]), metrics)
    decisions = []
    for i in range(5):
        for c in range(N_CLIENTS):
            b = c in byz
            row = {"round": 10 * (i + 1), "client": c, "byzantine": int(b), "accepted": int(not b)}
            if agg == "diversefl":
                row.update(c1=-1.0 if b else 1.0, c2=1e3 if b and i == 0 else 0.9 + 0.05 * c)
            decisions.append(row)
    _write_csv(d / "decisions.csv", list(decisions[0]), decisions)
    (d / "config.toml").write_text(
        f'name = "{d.name}"\nseed = {seed}\n\n[aggregator]\nname = "{agg}"\n'
        + ("eps1 = 0.4\neps2 = 2.5\n" if agg == "diversefl" else "")
        + f'\n[attack]\nname = "{attack}"\nf = {len(byz)}\n'
    )
    summary = {
        "name": d.name,
        "final_test_accuracy": final,
        "best_test_accuracy": final,
        "seed": seed,
        "aggregator": agg,
        "attack": attack,
        "byzantine_ids": byz,
        "mean_tpr": 1.0 if byz else None,
        "mean_fpr": 0.0,
    }
    (d / "summary.json").write_text(json.dumps(summary))
    return {
        "aggregator": agg,
        "attack": attack,
        "seed": seed,
        "final_test_accuracy": final,
        "best_test_accuracy": final,
        "mean_tpr": "" if summary["mean_tpr"] is None else 1.0,
        "mean_fpr": 0.0,
        "wall_seconds": 1.0,
        "run_dir": d.name,
    }


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    rows = [_make_run(root, a, k, s) for a in AGGS for k in ATTACKS for s in SEEDS]
    _write_csv(root / "sweep.csv", list(rows[0]), rows)
    return root


@pytest.mark.parametrize("suffix", [".png", ".pdf", ".svg"])
def test_plot_curves_writes_each_format(sweep_dir: Path, tmp_path: Path, suffix: str) -> None:
    out = plot_curves(sweep_dir, out=tmp_path / f"fig{suffix}", title="synthetic")
    assert out == tmp_path / f"fig{suffix}"
    assert out.stat().st_size > 1000


def test_plot_curves_default_out_single_run_and_other_metric(sweep_dir: Path) -> None:
    assert plot_curves(sweep_dir) == sweep_dir / "test_accuracy.png"
    assert (sweep_dir / "test_accuracy.png").stat().st_size > 1000
    one = sweep_dir / "diversefl__sign_flip__seed0"
    assert plot_curves(one, metric="test_loss").stat().st_size > 1000


def test_plot_curves_errors(sweep_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="nothing"):
        plot_curves(empty)
    with pytest.raises(ValueError, match="bogus"):
        plot_curves(sweep_dir, metric="bogus")
    with pytest.raises(ValueError, match="backdoor_accuracy.*available: test_accuracy"):
        plot_curves(sweep_dir, metric="backdoor_accuracy")
    with pytest.raises(ValueError, match="jpg"):
        plot_curves(sweep_dir, out=tmp_path / "fig.jpg")


def test_plot_c1c2(sweep_dir: Path, tmp_path: Path) -> None:
    out = plot_c1c2(sweep_dir, out=tmp_path / "c1c2.png", clients=2)
    assert out.stat().st_size > 1000
    assert plot_c1c2(sweep_dir / "diversefl__none__seed1") == (
        sweep_dir / "diversefl__none__seed1" / "c1c2.png"
    )
    with pytest.raises(ValueError, match="c1"):
        plot_c1c2(sweep_dir / "oracle__none__seed0", out=tmp_path / "x.png")


def _expected(agg: str, attack: str) -> str:
    a, b = (_final(agg, attack, s) for s in SEEDS)
    return f"{(a + b) / 2:.3f} ± {abs(a - b) / 2**0.5:.3f}"


def _parse(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()]


@pytest.mark.parametrize("from_summaries", [False, True])
def test_accuracy_table(sweep_dir: Path, from_summaries: bool) -> None:
    if from_summaries:
        (sweep_dir / "sweep.csv").unlink()
    text = accuracy_table(sweep_dir)
    tables = [t for t in text.split("\n\n") if t.startswith("|")]
    assert len(tables) == 2
    acc = _parse(tables[0])
    assert acc[0] == ["Aggregator", "No attack", "Sign flip"]
    assert [r[0] for r in acc[2:]] == ["OracleSGD", "DiverseFL"]
    for row, agg in zip(acc[2:], AGGS, strict=True):
        assert row[1:] == [_expected(agg, k) for k in ATTACKS]
    det = _parse(tables[1])
    assert det[2] == ["OracleSGD", "– / 0.000", "1.000 / 0.000"]
    with pytest.raises(ValueError, match="no_such_metric"):
        accuracy_table(sweep_dir, metric="no_such_metric")


def test_accuracy_table_single_seed(sweep_dir: Path) -> None:
    text = accuracy_table(sweep_dir / "diversefl__sign_flip__seed0")
    assert f"| DiverseFL | {_final('diversefl', 'sign_flip', 0):.3f} |" in text


def test_aggregator_style_stable_and_distinct() -> None:
    known = [
        "oracle", "mean", "median", "noisy_median", "bulyan", "krum", "multi_krum",
        "trimmed_mean", "rsa", "diversefl", "diversefl-s1", "diversefl-s3", "fltrust",
        "geomed", "centered_clipping",
    ]  # fmt: skip
    styles = [aggregator_style(k) for k in known]
    assert len({s["color"] for s in styles}) == len(known)
    assert aggregator_style("oracle") == {"color": "#000000", "linestyle": "--", "marker": ""}
    assert aggregator_style("trimmed_mean0.2") == aggregator_style("trimmed_mean")
    assert aggregator_style("my-new-rule") == aggregator_style("my-new-rule")
    assert set(aggregator_style("my-new-rule")) == {"color", "linestyle", "marker"}
    assert aggregator_name("oracle") == "OracleSGD"
    assert aggregator_name("noisy_median") == "N-Median"
    assert aggregator_name("diversefl-s1") == "DiverseFL (s=1%)"
    assert aggregator_name("diversefl-s5") == "DiverseFL (s=5%)"


def test_cli_plot_table_and_heatmap(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    """`diversefl plot --table --heatmap` prints the markdown table and writes the heat-map."""
    from diversefl.cli import main

    heat = tmp_path / "heat.png"
    assert main(["plot", str(sweep_dir), "--table", "--heatmap", str(heat)]) == 0
    printed = capsys.readouterr()
    assert "| Aggregator |" in printed.out
    assert "wrote" not in printed.out and "wrote" in printed.err  # stdout stays a table
    assert heat.stat().st_size > 1000
    # --heatmap alone draws only the heat-map (no table, no curves)
    alone = tmp_path / "alone.png"
    assert main(["plot", str(sweep_dir), "--heatmap", str(alone)]) == 0
    printed = capsys.readouterr()
    assert "| Aggregator |" not in printed.out and alone.stat().st_size > 1000
    assert not (sweep_dir / "test_accuracy.png").exists()
    assert main(["plot", str(tmp_path / "empty_dir_missing")]) == 2


def test_plot_curves_several_metrics_one_figure(sweep_dir: Path, tmp_path: Path) -> None:
    one = plot_curves(sweep_dir, metric="test_accuracy", out=tmp_path / "one.png")
    two = plot_curves(sweep_dir, metric=["test_accuracy", "tpr"], out=tmp_path / "two.png")
    assert two.stat().st_size > one.stat().st_size > 1000  # twice the panels
    with pytest.raises(ValueError, match="bogus"):
        plot_curves(sweep_dir, metric=["test_accuracy", "bogus"])


def test_accuracy_table_ranks_by_worst_attack(tmp_path: Path, monkeypatch) -> None:
    # per-attack means, hand-computed: mean: sign flip (0.1+0.3)/2 = 0.2, ALIE 0.8 -> worst 0.2,
    # mean 0.5; diversefl: sign flip 0.9, ALIE (0.6+0.7)/2 = 0.65 -> worst 0.65, mean 0.775;
    # median has no ALIE run, so it is not ranked.
    rows = [
        ("mean", "none", 0, 0.9), ("mean", "sign_flip", 0, 0.1), ("mean", "sign_flip", 1, 0.3),
        ("mean", "alie", 0, 0.8), ("diversefl", "sign_flip", 0, 0.9),
        ("diversefl", "alie", 0, 0.6), ("diversefl", "alie", 1, 0.7),
        ("median", "sign_flip", 0, 0.5),
    ]  # fmt: skip
    lines = ["aggregator,attack,seed,final_test_accuracy,mean_tpr,mean_fpr"]
    lines += [f"{a},{t},{s},{v},," for a, t, s, v in rows]
    (tmp_path / "sweep.csv").write_text("\n".join(lines) + "\n")
    acc = _parse(accuracy_table(tmp_path).split("\n\n")[1])
    assert acc[0] == [
        "Aggregator", "No attack", "Sign flip", "ALIE", "Worst attack", "Mean under attack"
    ]  # fmt: skip
    by_name = {r[0]: r[-2:] for r in acc[2:]}
    # both rows mix one- and two-seed cells: ranked, but starred
    assert by_name["Mean"] == ["0.200 (Sign flip) *", "0.500 *"]
    assert by_name["DiverseFL"] == ["0.650 (ALIE) *", "0.775 *"]
    assert by_name["Median"] == ["", ""]
    assert "Blank: no run of that pair" in accuracy_table(tmp_path)  # median has no ALIE run
    assert {r[0]: r[2] for r in acc[2:]}["Mean"] == "0.200 ± 0.141"
    assert {r[0]: r[3] for r in acc[2:]}["Mean"] == "0.800 (n=1)"
    # seed 0 alone: every cell has one seed, no markers; mean: worst sign flip 0.1
    only0 = accuracy_table(tmp_path, seeds=[0])
    assert "(n=" not in only0 and " *" not in only0
    assert {r[0]: r[-2:] for r in _parse(only0.split("\n\n")[1])[2:]}["Mean"] == [
        "0.100 (Sign flip)",
        "0.450",
    ]
    with pytest.raises(ValueError, match=r"seed 5 .*seeds present: 0, 1"):
        accuracy_table(tmp_path, seeds=[5])
    # the heat-map's title names the seeds it averages
    assert seed_label([{"seed": "1"}, {"seed": "0"}, {"seed": "1"}]) == "mean over seeds 0, 1"
    assert seed_label([{"seed": 2}]) == "seed 2" and seed_label([{}]) == "mean over runs"
    titles: list[str] = []
    texts: list[str] = []
    import matplotlib.axes

    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda ax, t, **k: titles.append(t))
    real_text = matplotlib.axes.Axes.text

    def text(ax, x, y, t, **k):
        texts.append(t)
        return real_text(ax, x, y, t, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "text", text)
    plot_heatmap(tmp_path, out=tmp_path / "h0.png", seeds=[0])
    assert texts and not any("n=" in t for t in texts)  # one seed everywhere: no count shown
    texts.clear()
    plot_heatmap(tmp_path, out=tmp_path / "h01.png")
    assert titles == [
        "final test accuracy (seed 0)",
        "final test accuracy (mean over seeds 0, 1; n=k: a cell of k of 2 seeds)",
    ]
    # first row Mean: no attack 0.9 (n=1), sign flip 0.2 (2 seeds), ALIE 0.8 (n=1), worst 0.2
    # (the worst column has no count of its own); then Median's one cell, sign flip 0.5 (n=1)
    assert texts[:5] == ["0.900\nn=1", "0.200", "0.800\nn=1", "0.200", "0.500\nn=1"]
    assert attack_summary({"alie": [0.5], "ipm": [0.5004]}, ["alie", "ipm"])[0] == "0.500 (all)"
    three = {"alie": [0.5], "ipm": [0.5001], "min_max": [0.7]}
    assert attack_summary(three, list(three)) == ["0.500 (2 tied)", "0.567"]
    # the heat-map's last column is the same worst case (NaN for the unranked row)
    aggs, cols, grid = heatmap_grid([dict(zip(lines[0].split(","), ln.split(","), strict=True))
                                     for ln in lines[1:]])  # fmt: skip
    assert cols == ["none", "sign_flip", "alie", "worst"]
    worst = {a: row[-1] for a, row in zip(aggs, grid, strict=True)}
    assert worst["mean"] == pytest.approx(0.2) and worst["diversefl"] == pytest.approx(0.65)
    assert math.isnan(worst["median"]) and math.isnan(grid[aggs.index("diversefl")][0])
    plot_heatmap(tmp_path, out=tmp_path / "heat.png")
    assert (tmp_path / "heat.png").stat().st_size > 1000
    # one attack only: nothing to rank
    (tmp_path / "sweep.csv").write_text("\n".join(lines[:3]) + "\n")
    assert "Worst attack" not in accuracy_table(tmp_path)
    assert "Blank" not in accuracy_table(tmp_path)  # every pair has its run
    assert "Measured on" not in accuracy_table(tmp_path)  # no run records its CPU


def test_table_names_the_machines_its_runs_come_from(tmp_path: Path) -> None:
    lines = ["aggregator,attack,seed,final_test_accuracy,cpu",
             "mean,none,0,0.9,AMD EPYC", "mean,none,1,0.8,AMD EPYC",
             "mean,sign_flip,0,0.1,Intel Xeon", "mean,sign_flip,1,0.2,"]  # fmt: skip
    (tmp_path / "sweep.csv").write_text("\n".join(lines) + "\n")
    assert accuracy_table(tmp_path).endswith(
        "Measured on: AMD EPYC (2 runs), Intel Xeon (1 run), not recorded (1 run).\n"
    )
    assert machine_note([{"machine": {"cpu": "X"}}, {"machine": {"cpu": "X"}}]) == (
        "Measured on: X (2 runs)."
    )
    assert heatmap_grid([{"aggregator": "mean", "attack": "alie", "final_test_accuracy": 1}])[
        1
    ] == ["alie"]


def test_metric_bars_backdoor_board(tmp_path: Path) -> None:
    """Per aggregator and metric, the values of its runs (a missing one skipped), in display
    order; the CLI draws them and names an unknown metric."""
    from diversefl.cli import main

    lines = [
        "aggregator,attack,seed,final_test_accuracy,final_main_accuracy,final_backdoor_accuracy",
        "mean,backdoor,0,0.83,0.92,0.98",
        "mean,backdoor,1,0.81,0.90,0.96",
        "oracle,backdoor,0,0.75,0.84,0.001",
        "diversefl,backdoor,0,0.75,0.84,",
    ]
    (tmp_path / "sweep.csv").write_text("\n".join(lines) + "\n")
    rows = [dict(zip(lines[0].split(","), ln.split(","), strict=True)) for ln in lines[1:]]
    bars = metric_bars(rows, ["final_main_accuracy", "final_backdoor_accuracy"])
    assert list(bars) == ["oracle", "mean", "diversefl"]
    assert bars["mean"] == {"final_main_accuracy": [0.92, 0.90],
                            "final_backdoor_accuracy": [0.98, 0.96]}  # fmt: skip
    assert bars["diversefl"]["final_backdoor_accuracy"] == []
    with pytest.raises(ValueError, match="'bogus'"):
        metric_bars(rows, ["final_main_accuracy", "bogus"])
    out = tmp_path / "bars.png"
    metrics = "final_main_accuracy,final_backdoor_accuracy"
    assert main(["plot", str(tmp_path), "--bars", metrics, "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert main(["plot", str(tmp_path), "--bars", "final_main_accuracy,bogus"]) == 2
    # --seeds: seed 1 has only mean's run; seed 3 has none (a clear error, exit 2)
    assert metric_bars([r for r in rows if r["seed"] == "1"], ["final_main_accuracy"]) == {
        "mean": {"final_main_accuracy": [0.90]}
    }
    one = tmp_path / "seed1.png"
    assert main(["plot", str(tmp_path), "--bars", metrics, "--seeds", "1", "--out", str(one)]) == 0
    assert one.stat().st_size > 1000
    assert main(["plot", str(tmp_path), "--bars", metrics, "--seeds", "3"]) == 2
    assert main(["plot", str(tmp_path), "--table", "--seeds", "0,x"]) == 2
    assert main(["plot", str(tmp_path), "--bars", "final_main_accuracy,"]) == 2


def test_attack_invariant_oracle_fills_the_attacks_it_was_not_run_under(tmp_path: Path) -> None:
    """OracleSGD run under no attack and sign flip only: the table and the heat-map show its
    sign-flip run for every other attack, marked, and rank it; a defense with a missing cell
    stays blank and unranked."""
    from diversefl import aggregators
    from diversefl.plots import ATTACK_INVARIANT

    assert ATTACK_INVARIANT == {
        name for name, cls in aggregators.REGISTRY.items() if cls.attack_invariant
    }
    lines = ["aggregator,attack,seed,final_test_accuracy,mean_tpr,mean_fpr",
             "oracle,none,0,0.9,,0.0", "oracle,sign_flip,0,0.8,1.0,0.0",
             "mean,none,0,0.9,,0.0", "mean,sign_flip,0,0.1,0.0,0.0", "mean,alie,0,0.5,0.0,0.0",
             "median,none,0,0.7,,0.0", "median,alie,0,0.6,0.0,0.0"]  # fmt: skip
    (tmp_path / "sweep.csv").write_text("\n".join(lines) + "\n")
    text = accuracy_table(tmp_path)
    accuracy, detection = text.split("**mean TPR / FPR")
    rows = {ln.split(" | ")[0].lstrip("| "): ln for ln in accuracy.splitlines() if ln[:1] == "|"}
    assert rows["OracleSGD"] == "| OracleSGD | 0.900 | 0.800 | 0.800 (=) | 0.800 (all) | 0.800 |"
    assert rows["Median"] == "| Median | 0.700 |  | 0.600 |  |  |"
    assert "it was run under Sign flip, shown for the others" in text
    assert "| OracleSGD | – / 0.000 | 1.000 / 0.000 | 1.000 / 0.000 (=) |" in detection
    aggs, cols, grid = heatmap_grid([dict(zip(lines[0].split(","), ln.split(","), strict=True))
                                     for ln in lines[1:]])  # fmt: skip
    assert cols == ["none", "sign_flip", "alie", "worst"]
    assert grid[aggs.index("oracle")] == pytest.approx([0.9, 0.8, 0.8, 0.8])
    assert math.isnan(grid[aggs.index("median")][1]) and math.isnan(grid[aggs.index("median")][3])
    plot_heatmap(tmp_path, out=tmp_path / "heat.png")
    assert (tmp_path / "heat.png").stat().st_size > 1000


def test_the_fill_follows_the_rule_a_run_used_not_its_label(tmp_path: Path) -> None:
    """A sweep entry labelled "ideal" (rule oracle in its runs' config.toml) gets the fill;
    one labelled "oracle" whose runs used the mean does not (it was attacked for real, so its
    missing cell stays blank). Without run files the label decides, as before."""
    import tomli_w

    lines = ["aggregator,attack,seed,final_test_accuracy,run_dir",
             "ideal,none,0,0.9,a", "ideal,sign_flip,0,0.8,b",
             "oracle,none,0,0.9,c", "oracle,sign_flip,0,0.3,d",
             "mean,none,0,0.9,e", "mean,sign_flip,0,0.1,f", "mean,alie,0,0.5,g"]  # fmt: skip
    rules = {"a": "oracle", "b": "oracle", "c": "mean", "d": "mean"}
    for run_dir, rule in rules.items():
        (tmp_path / run_dir).mkdir()
        (tmp_path / run_dir / "config.toml").write_text(
            tomli_w.dumps({"aggregator": {"name": rule}})
        )
    (tmp_path / "sweep.csv").write_text("\n".join(lines) + "\n")
    text = accuracy_table(tmp_path)
    rows = {ln.split(" | ")[0].lstrip("| "): ln for ln in text.splitlines() if ln[:1] == "|"}
    assert rows["ideal"] == "| ideal | 0.900 | 0.800 | 0.800 (=) | 0.800 (all) | 0.800 |"
    assert rows["OracleSGD"] == "| OracleSGD | 0.900 | 0.300 |  |  |  |"  # label "oracle"
    aggs, _, grid = heatmap_grid(table_rows(tmp_path))
    assert grid[aggs.index("ideal")] == pytest.approx([0.9, 0.8, 0.8, 0.8])
    assert math.isnan(grid[aggs.index("oracle")][2])
    assert invariant_labels(table_rows(tmp_path)) == {"ideal"}
    # no run files: the label decides (the leaderboards' "oracle" keeps its fill)
    assert invariant_labels([{"aggregator": "oracle"}, {"aggregator": "ideal"}]) == {"oracle"}
    # a label whose runs record a rule is judged by those runs only, all of them: a row
    # without run files does not bring the label back, nor does one oracle run among means
    mixed = [{"aggregator": "oracle", "rule": "mean"}, {"aggregator": "oracle"},
             {"aggregator": "x", "rule": "oracle"}, {"aggregator": "x", "rule": "mean"},
             {"aggregator": "y", "rule": "oracle"}, {"aggregator": "y"}]  # fmt: skip
    assert invariant_labels(mixed) == {"y"}
    # an unreadable config.toml (not UTF-8) is no rule, not a crash
    (tmp_path / "a" / "config.toml").write_bytes(b"\xff\xfe[aggregator]\n")
    assert [r.get("rule") for r in table_rows(tmp_path)][:2] == [None, "oracle"]


def test_a_run_without_the_metric_is_no_cell(tmp_path: Path, capsys) -> None:
    """A run whose metric is missing is left out of the table as of the heat-map: OracleSGD's
    sign-flip run without a final accuracy does not block the fill from its ALIE run."""
    from diversefl.cli import main

    lines = ["aggregator,attack,seed,final_test_accuracy,best_test_accuracy,mean_tpr,mean_fpr",
             "oracle,none,0,0.9,0.9,,0.0", "oracle,sign_flip,0,,0.5,1.0,0.0",
             "oracle,alie,0,0.8,0.85,1.0,0.0",
             "mean,none,0,0.9,0.95,,0.0", "mean,sign_flip,0,0.1,0.6,0.0,0.0",
             "mean,alie,0,0.5,0.7,0.0,0.0"]  # fmt: skip
    (tmp_path / "sweep.csv").write_text("\n".join(lines) + "\n")
    text = accuracy_table(tmp_path)
    assert "| OracleSGD | 0.900 | 0.800 (=) | 0.800 | 0.800 (all) | 0.800 |" in text
    assert "| OracleSGD | – / 0.000 | 1.000 / 0.000 (=) | 1.000 / 0.000 |" in text
    # the heat-map draws --table-metric: best accuracy's worst cell of Mean is 0.6
    aggs, cols, grid = heatmap_grid(
        [dict(zip(lines[0].split(","), ln.split(","), strict=True)) for ln in lines[1:]],
        "best_test_accuracy",
    )
    assert grid[aggs.index("mean")][-1] == pytest.approx(0.6)
    heat = tmp_path / "best.png"
    assert main(["plot", str(tmp_path), "--heatmap", str(heat),
                 "--table-metric", "best_test_accuracy"]) == 0  # fmt: skip
    assert heat.stat().st_size > 1000
    assert main(["plot", str(tmp_path), "--heatmap", str(heat), "--table-metric", "bogus"]) == 2
    assert "metric 'bogus' not found" in capsys.readouterr().err


def test_trimmed_mean_variants_have_their_own_styles() -> None:
    """Yin's, Xie's and Guerraoui's trimmed means (labels as in the leaderboard configs) are
    told apart; plain trimmed_mean keeps its style, and other labels map as before."""
    plain = {"color": "#e377c2", "linestyle": "-", "marker": "P"}
    variants = ["trimmed_mean", "trimmed_mean_xie", "trimmed_mean_guerraoui"]
    styles = [aggregator_style(v) for v in variants]
    assert styles[0] == plain
    for i, a in enumerate(styles):
        for b in styles[i + 1 :]:
            assert (a["linestyle"], a["marker"]) != (b["linestyle"], b["marker"])
            assert a != b
    # spellings of the same rule map to the same style
    for label in ("trimmedmean", "TrimmedMean", "Trimmed Mean", "trimmed-mean", "trimmed_mean0.2"):
        assert aggregator_style(label) == plain, label
    for label in ("Trimmed Mean (xie)", "trimmed-mean-xie", "TrimmedMeanXie", "trimmedmean_xie"):
        assert aggregator_style(label) == styles[1], label
    for label in ("Trimmed Mean (guerraoui)", "trimmed_mean-Guerraoui"):
        assert aggregator_style(label) == styles[2], label
    # names and order as before; unknown labels keep their hashed style
    assert [aggregator_name(v) for v in variants] == [
        "Trimmed Mean", "Trimmed Mean (xie)", "Trimmed Mean (guerraoui)"
    ]  # fmt: skip
    assert sorted(["krum", *variants[::-1], "median"], key=aggregator_sort_key) == [
        "median", "trimmed_mean", "trimmed_mean_guerraoui", "trimmed_mean_xie", "krum"
    ]  # fmt: skip
    assert aggregator_style("my-new-rule") == {"color": "#8c6d31", "linestyle": "--", "marker": "v"}
    assert aggregator_style("oracle") == {"color": "#000000", "linestyle": "--", "marker": ""}


def test_bars_stay_within_the_axes(tmp_path: Path, monkeypatch) -> None:
    """Each bar, its whisker and its value label lie inside the x range: a wide std near 1.0
    (whisker to 1.122) and a metric above 1 (seconds) are not cut off; accuracy keeps 0-1.12."""
    import matplotlib.axes
    from matplotlib.container import ErrorbarContainer

    axes: list = []
    real = matplotlib.axes.Axes.barh

    def barh(ax, *args, **kwargs):
        axes.append(ax)
        return real(ax, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "barh", barh)
    lines = ["aggregator,attack,seed,final_test_accuracy,wall_seconds",
             "mean,none,0,1.0,40", "mean,none,1,1.0,60", "mean,none,2,0.5,50",
             "median,none,0,0.7,20"]  # fmt: skip
    (tmp_path / "sweep.csv").write_text("\n".join(lines) + "\n")
    # mean's accuracy: 5/6 + sample std sqrt(1/12) = 1.122; its seconds: 50 + 10
    cases = ((["final_test_accuracy"], 5 / 6 + (1 / 12) ** 0.5), (["wall_seconds"], 60))
    for metrics, top in cases:
        axes.clear()
        plot_metric_bars(tmp_path, metrics, out=tmp_path / f"{metrics[0]}.png")
        (ax,) = axes
        lo, hi = ax.get_xlim()
        ends = [p.get_x() + p.get_width() for p in ax.patches]
        ((whiskers,),) = [c.lines[2] for c in ax.containers if isinstance(c, ErrorbarContainer)]
        right = max(x for seg in whiskers.get_segments() for x, _ in seg)
        assert right == pytest.approx(top)
        assert lo <= 0 and max(ends) < hi and right < hi
        assert max(t.get_position()[0] for t in ax.texts) < hi
        if metrics == ["final_test_accuracy"]:
            assert hi < 1.3
    (tmp_path / "sweep.csv").write_text("\n".join(lines[:2] + lines[4:]) + "\n")
    axes.clear()
    plot_metric_bars(tmp_path, ["final_test_accuracy"], out=tmp_path / "plain.png")
    assert axes[0].get_xlim() == (0.0, 1.12)  # an ordinary accuracy board keeps its range


def test_worst_attack_is_the_highest_where_lower_is_better(tmp_path: Path, monkeypatch) -> None:
    """For a loss, FPR, seconds or backdoor accuracy the worst attack is the one with the
    highest value: hand-computed per-attack means, table and heat-map agree."""
    from diversefl.plots import lower_is_better

    assert lower_is_better("final_backdoor_accuracy") and lower_is_better("mean_fpr")
    assert lower_is_better("test_loss") and lower_is_better("wall_seconds")
    assert not lower_is_better("final_test_accuracy") and not lower_is_better("mean_tpr")
    assert not lower_is_better("final_main_accuracy")
    # whole words only, and names that turn the sense around are higher-is-better
    for name in ("tpr_minus_fpr", "loss_reduction", "backdoor_rejected", "classloss", "fprx"):
        assert not lower_is_better(name), name
    assert lower_is_better("max_backdoor_accuracy") and lower_is_better("best_test_loss")
    # backdoor accuracy: mean lets the backdoor in under ALIE (0.9), not under IPM (0.1);
    # median: IPM (0.3 + 0.5) / 2 = 0.4 > ALIE 0.2
    lines = ["aggregator,attack,seed,final_test_accuracy,final_backdoor_accuracy",
             "mean,alie,0,0.5,0.9", "mean,ipm,0,0.6,0.1",
             "median,alie,0,0.7,0.2", "median,ipm,0,0.8,0.3", "median,ipm,1,0.8,0.5"]  # fmt: skip
    (tmp_path / "sweep.csv").write_text("\n".join(lines) + "\n")
    text = accuracy_table(tmp_path, metric="final_backdoor_accuracy")
    assert "lower is better, so the worst attack is the highest value" in text
    by_name = {r[0]: r[-2:] for r in _parse(text.split("\n\n")[1])[2:]}
    assert by_name["Mean"] == ["0.900 (ALIE)", "0.500"]
    assert by_name["Median"] == ["0.400 (IPM) *", "0.300 *"]
    # accuracy on the same runs still takes the lowest
    acc = accuracy_table(tmp_path)
    assert "lower is better" not in acc
    assert {r[0]: r[-2] for r in _parse(acc.split("\n\n")[1])[2:]}["Mean"] == "0.500 (ALIE)"
    rows = [dict(zip(lines[0].split(","), ln.split(","), strict=True)) for ln in lines[1:]]
    aggs, cols, grid = heatmap_grid(rows, "final_backdoor_accuracy")
    assert cols == ["alie", "ipm", "worst"]
    worst = {a: row[-1] for a, row in zip(aggs, grid, strict=True)}
    assert worst == {"mean": pytest.approx(0.9), "median": pytest.approx(0.4)}
    assert heatmap_grid(rows)[2][aggs.index("mean")][-1] == pytest.approx(0.5)
    # the heat-map reverses its colours, so bright stays good: the low (good) backdoor cell
    # gets dark text on a bright colour, the high (bad) one white text
    import matplotlib.axes

    colours: dict[str, str] = {}
    cmaps: list[str] = []
    real_text, real_imshow = matplotlib.axes.Axes.text, matplotlib.axes.Axes.imshow

    def text(ax, x, y, t, **k):
        colours.setdefault(t, k.get("color"))
        return real_text(ax, x, y, t, **k)

    def imshow(ax, *a, **k):
        cmaps.append(k.get("cmap"))
        return real_imshow(ax, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "text", text)
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", imshow)
    plot_heatmap(tmp_path, metric="final_backdoor_accuracy", out=tmp_path / "b.png", seeds=[0])
    assert cmaps == ["viridis_r"]
    assert colours["0.100"] == "black" and colours["0.900"] == "white"
    plot_heatmap(tmp_path, out=tmp_path / "a.png", seeds=[0])
    assert cmaps[-1] == "viridis" and colours["0.500"] == "white"
    # one attack: no worst column, so no word about it
    (tmp_path / "sweep.csv").write_text("\n".join(lines[:3:2]) + "\n")
    one = accuracy_table(tmp_path, metric="final_backdoor_accuracy")
    assert "Worst attack" not in one and "lower is better" not in one


def test_every_registered_attack_has_a_table_name() -> None:
    """Table and heat-map headers name every attack readably (not 'alie opt'), each variant
    right after the attack it refines, and panel titles use the same names."""
    from diversefl import attacks
    from diversefl.plots.style import ATTACK_SHORT, attack_name, attack_sort_key

    assert set(attacks.REGISTRY) <= set(ATTACK_SHORT)
    assert len(set(ATTACK_SHORT.values())) == len(ATTACK_SHORT)
    order = sorted(attacks.REGISTRY, key=attack_sort_key)
    assert order.index("alie_opt") == order.index("alie") + 1
    assert order.index("ipm_opt") == order.index("ipm") + 1
    assert order.index("fang_trmean") == order.index("fang_krum") + 1
    assert attack_name("alie_opt") == "ALIE (opt.) Attack"
    assert attack_name("sign_flip") == "Sign Flip Attack"  # the paper's panel titles stay
    assert attack_name("my_thing") == "My Thing Attack"
