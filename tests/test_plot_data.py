"""The numbers plot_curves and plot_c1c2 draw, checked against hand computations.

tests/test_plots.py checks that the figures are written; here every Axes.plot, fill_between
and scatter call is recorded and its data compared with the per-round mean, min and max of the
seeds written to metrics.csv (computed with plain Python) and with the c1/c2 columns written to
decisions.csv."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from diversefl.plots import aggregator_name, aggregator_style, attack_name, plot_c1c2, plot_curves
from diversefl.results import METRIC_COLUMNS  # the runner's metrics.csv layout

DECISION_COLUMNS = ["round", "client", "byzantine", "accepted", "c1", "c2", "cos"]


class Call(NamedTuple):
    """One recorded drawing call: the axes, its arguments and the artist it returned."""

    ax: Any
    args: tuple
    kwargs: dict
    artist: Any


@pytest.fixture
def drawn(monkeypatch) -> dict[str, list[Call]]:
    """Every Axes.plot, Axes.fill_between and Axes.scatter call made while the test runs."""
    import matplotlib.axes

    calls: dict[str, list[Call]] = {"plot": [], "fill_between": [], "scatter": []}

    def recorder(name: str):
        real = getattr(matplotlib.axes.Axes, name)

        def record(ax, *args, **kwargs):
            artist = real(ax, *args, **kwargs)
            calls[name].append(Call(ax, args, kwargs, artist))
            return artist

        return record

    for name in calls:
        monkeypatch.setattr(matplotlib.axes.Axes, name, recorder(name))
    return calls


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, restval="")
        w.writeheader()
        w.writerows(rows)


def _run(
    root: Path,
    agg: str,
    attack: str,
    seed: int,
    metrics: list[dict],
    decisions: list[dict] | None = None,
    decision_columns: list[str] = DECISION_COLUMNS,
    aggregator_extra: str = "",
) -> Path:
    """A run directory laid out as the runner writes it (config.toml, metrics.csv,
    summary.json, optionally decisions.csv); missing metric cells are left blank."""
    d = root / f"{agg}__{attack}__seed{seed}"
    d.mkdir(parents=True)
    _write_csv(d / "metrics.csv", METRIC_COLUMNS, metrics)
    if decisions is not None:
        _write_csv(d / "decisions.csv", decision_columns, decisions)
    (d / "config.toml").write_text(
        f'name = "{d.name}"\nseed = {seed}\n\n[aggregator]\nname = "{agg}"\n{aggregator_extra}'
        f'\n[attack]\nname = "{attack}"\n'
    )
    summary = {"name": d.name, "seed": seed, "aggregator": agg, "attack": attack}
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def _floats(values) -> list[float]:
    return [float(v) for v in values]


def _panel(ax) -> str:
    """A panel's title without its '(a) ' letter."""
    title = ax.get_title()
    assert title[0] == "(" and title[2:4] == ") ", title
    return title[4:]


def _lines(calls: list[Call]) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """{(panel, legend label): (x, y)} of the drawn curves; each pair drawn once."""
    out: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for c in calls:
        (line,) = c.artist
        key = (_panel(c.ax), line.get_label())
        assert key not in out, f"{key} drawn twice"
        out[key] = (_floats(line.get_xdata()), _floats(line.get_ydata()))
    return out


def _bands(calls: list[Call]) -> dict[tuple[str, str], tuple[list[float], ...]]:
    """{(panel, colour): (x, lower, upper)} of the drawn min-max bands."""
    out: dict[tuple[str, str], tuple[list[float], ...]] = {}
    for c in calls:
        x, lo, hi = c.args
        key = (_panel(c.ax), c.kwargs["color"])
        assert key not in out, f"{key} drawn twice"
        out[key] = (_floats(x), _floats(lo), _floats(hi))
    return out


# ---------------------------------------------------------------------------------------------
# Curves: a grid of 2 aggregators x 2 attacks x 3 seeds, every seed with the same rounds, plus
# one aggregator with a single seed
# ---------------------------------------------------------------------------------------------

AGGS = ["median", "diversefl"]
ATTACKS = ["none", "sign_flip"]
SEEDS = [0, 1, 2]
ROUNDS = [10, 20, 30, 40]
# per seed and round: which seed is lowest / highest changes from round to round, and seed 0
# is never the mean
WOBBLE = {0: [0.00, 0.05, -0.02, 0.01], 1: [0.04, -0.03, 0.06, 0.00], 2: [-0.05, 0.02, 0.01, 0.07]}


def _acc(agg: str, attack: str, seed: int, i: int) -> float:
    return round(
        0.3 + 0.2 * AGGS.index(agg) + 0.1 * ATTACKS.index(attack) + 0.1 * i + WOBBLE[seed][i], 4
    )


def _loss(agg: str, attack: str, seed: int, i: int) -> float:
    return round(3.0 - 2 * _acc(agg, attack, seed, i) + 0.3 * seed * seed, 4)


def _tpr(agg: str, attack: str, seed: int, i: int) -> float | str:
    return "" if attack == "none" else round(0.5 + 0.1 * seed - 0.05 * i + 0.1 * AGGS.index(agg), 4)


SERIES = {"test_accuracy": _acc, "test_loss": _loss, "tpr": _tpr}
SINGLE = {
    "test_accuracy": [0.11, 0.22, 0.33, 0.44],
    "test_loss": [2.5, 2.0, 1.7, 1.6],
    "tpr": [0.9, 0.8, 0.7, 0.6],
}  # "mean", sign flip, seed 0 only


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    root = tmp_path / "grid"
    for agg in AGGS:
        for attack in ATTACKS:
            for seed in SEEDS:
                rows = [
                    {
                        "round": r,
                        "n_accepted": 5,
                        "fpr": 0.0,
                        "lr": 0.1,
                        "seconds": 1.0,
                        **{m: f(agg, attack, seed, i) for m, f in SERIES.items()},
                    }
                    for i, r in enumerate(ROUNDS)
                ]
                _run(root, agg, attack, seed, rows)
    rows = [{"round": r, **{m: v[i] for m, v in SINGLE.items()}} for i, r in enumerate(ROUNDS)]
    _run(root, "mean", "sign_flip", 0, rows)
    return root


def _by_hand(metric: str, agg: str, attack: str) -> tuple[list[float], ...]:
    """Per round: mean, min and max of the three seeds' values, with plain Python."""
    per_round = [[SERIES[metric](agg, attack, s, i) for s in SEEDS] for i in range(len(ROUNDS))]
    return (
        [statistics.fmean(v) for v in per_round],
        [min(v) for v in per_round],
        [max(v) for v in per_round],
    )


def test_curve_is_the_per_round_mean_over_seeds(grid: Path, tmp_path: Path, drawn) -> None:
    """Each line is the per-round mean of its seeds (statistics.fmean by hand), one seed: itself."""
    plot_curves(grid, out=tmp_path / "acc.png")
    lines = _lines(drawn["plot"])
    expected = {(attack_name(t), aggregator_name(a)) for a in AGGS for t in ATTACKS}
    expected.add((attack_name("sign_flip"), aggregator_name("mean")))
    assert set(lines) == expected
    for agg in AGGS:
        for attack in ATTACKS:
            x, y = lines[(attack_name(attack), aggregator_name(agg))]
            assert x == ROUNDS
            assert y == pytest.approx(_by_hand("test_accuracy", agg, attack)[0], abs=1e-12)
    x, y = lines[(attack_name("sign_flip"), aggregator_name("mean"))]
    assert (x, y) == (ROUNDS, pytest.approx(SINGLE["test_accuracy"], abs=1e-12))
    # first panel, median, round 10: seeds 0.30, 0.34, 0.25 -> mean 0.89 / 3
    assert lines[("No Attack", "Median")][1][0] == pytest.approx(0.89 / 3, abs=1e-12)
    assert drawn["plot"][0].ax.figure.get_suptitle() == "(mean and min-max over 3 seeds)"


def test_band_is_the_per_round_min_and_max_over_seeds(grid: Path, tmp_path: Path, drawn) -> None:
    """Each multi-seed line's band is its seeds' per-round min()/max() by hand; one seed: none."""
    plot_curves(grid, out=tmp_path / "acc.png")
    bands = _bands(drawn["fill_between"])
    assert set(bands) == {
        (attack_name(t), aggregator_style(a)["color"]) for a in AGGS for t in ATTACKS
    }
    for agg in AGGS:
        for attack in ATTACKS:
            x, lo, hi = bands[(attack_name(attack), aggregator_style(agg)["color"])]
            _, low, high = _by_hand("test_accuracy", agg, attack)
            assert x == ROUNDS
            assert lo == pytest.approx(low, abs=1e-12)
            assert hi == pytest.approx(high, abs=1e-12)
    # median, no attack: round 10 seeds 0.30/0.34/0.25, round 20 0.45/0.37/0.42
    x, lo, hi = bands[("No Attack", aggregator_style("median")["color"])]
    assert (lo[:2], hi[:2]) == (pytest.approx([0.25, 0.37]), pytest.approx([0.34, 0.45]))


@pytest.mark.parametrize("metric", ["test_loss", "tpr"])
def test_chosen_metric_is_drawn(grid: Path, tmp_path: Path, drawn, metric: str) -> None:
    """metric= draws that column's mean/min/max over seeds (by hand); a blank column draws none."""
    plot_curves(grid, metric=metric, out=tmp_path / f"{metric}.png")
    lines = _lines(drawn["plot"])
    bands = _bands(drawn["fill_between"])
    attacks = ATTACKS if metric == "test_loss" else ["sign_flip"]
    assert {k[0] for k in lines} == {attack_name(t) for t in attacks}
    for agg in AGGS:
        for attack in attacks:
            mean, low, high = _by_hand(metric, agg, attack)
            x, y = lines[(attack_name(attack), aggregator_name(agg))]
            assert (x, y) == (ROUNDS, pytest.approx(mean, abs=1e-12))
            _, lo, hi = bands[(attack_name(attack), aggregator_style(agg)["color"])]
            assert (lo, hi) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    x, y = lines[(attack_name("sign_flip"), aggregator_name("mean"))]
    assert y == pytest.approx(SINGLE[metric], abs=1e-12)


def test_several_metrics_one_panel_per_metric_and_attack(grid: Path, tmp_path, drawn) -> None:
    """Two metrics: each (metric, attack) panel, so titled, draws that metric's mean (by hand)."""
    plot_curves(grid, metric=["test_accuracy", "test_loss"], out=tmp_path / "two.png")
    lines = _lines(drawn["plot"])
    names = {"test_accuracy": "Top-1 test accuracy", "test_loss": "Test loss"}
    for metric, name in names.items():
        for attack in ATTACKS:
            for agg in AGGS:
                x, y = lines[(f"{name}, {attack_name(attack)}", aggregator_name(agg))]
                assert (x, y) == (ROUNDS, pytest.approx(_by_hand(metric, agg, attack)[0]))
    assert len(lines) == 2 * (len(AGGS) * len(ATTACKS) + 1)


def test_seeds_with_missing_rounds_align_by_round(tmp_path: Path, drawn) -> None:
    """Ragged seeds: per round, mean/min/max of the seeds with a value (by hand), up to the
    last round every seed reached (a seed that stopped early does not make the line jump)."""
    # aligned by round number, not row position; a blank or 'nan' cell counts as missing
    root = tmp_path / "ragged"
    acc = {
        0: {10: 0.2, 20: 0.4, 30: 0.6, 40: 0.8},
        1: {10: 0.4, 20: "nan", 30: 0.5, 35: ""},  # stopped after round 35, no value there
        2: {30: 0.7, 10: 0.9, 50: 0.3, 20: 0.1, 40: 0.6},  # rows out of order, one more round
    }
    for seed, values in acc.items():
        rows = [{"round": r, "test_accuracy": v, "test_loss": 1.0} for r, v in values.items()]
        _run(root, "median", "sign_flip", seed, rows)
    plot_curves(root, out=tmp_path / "ragged.png")
    x, y = _lines(drawn["plot"])[("Sign Flip Attack", "Median")]
    median = aggregator_style("median")["color"]
    x_band, lo, hi = _bands(drawn["fill_between"])[("Sign Flip Attack", median)]
    # seed 1's last value is at round 30 (35 is blank): rounds 40 and 50 are not drawn
    assert x == x_band == [10, 20, 30]
    # 10: (0.2+0.4+0.9)/3; 20: seed 1 is nan -> (0.4+0.1)/2; 30: (0.6+0.5+0.7)/3
    assert y == pytest.approx([0.5, 0.25, 0.6], abs=1e-12)
    assert lo == pytest.approx([0.2, 0.1, 0.5], abs=1e-12)
    assert hi == pytest.approx([0.9, 0.4, 0.7], abs=1e-12)


def test_runs_without_the_metric_are_no_seed(tmp_path: Path, drawn) -> None:
    """A run with the metric blank everywhere is no seed: mean/min/max of the others, by hand."""
    root = tmp_path / "blank"
    for seed, (first, second) in enumerate([(0.2, 0.6), (0.4, 0.2), ("", "")]):
        rows = [{"round": 5, "test_accuracy": first}, {"round": 10, "test_accuracy": second}]
        _run(root, "krum", "gaussian", seed, rows)
    plot_curves(root, out=tmp_path / "blank.png")
    x, y = _lines(drawn["plot"])[("Gaussian Attack", "Krum")]
    krum = aggregator_style("krum")["color"]
    _, lo, hi = _bands(drawn["fill_between"])[("Gaussian Attack", krum)]
    assert (x, y) == ([5, 10], pytest.approx([0.3, 0.4], abs=1e-12))
    assert (lo, hi) == (pytest.approx([0.2, 0.2]), pytest.approx([0.4, 0.6]))
    figure = drawn["plot"][0].ax.figure
    assert figure.get_suptitle() == "(mean and min-max over 2 seeds)"


# ---------------------------------------------------------------------------------------------
# C1 x C2 (Fig. 2)
# ---------------------------------------------------------------------------------------------

N = 6
BYZ = {"sign_flip": [1, 4], "none": []}


def _decisions(attack: str, seed: int) -> list[dict]:
    """Three rounds x six clients; honest c1 = +1 except client 3 at round 2, Byzantine c1 = -1
    except client 4 at round 3 (accepted); client 5 at round 1 has no c2 (not drawn)."""
    rows = []
    for r in (1, 2, 3):
        for c in range(N):
            byz = c in BYZ[attack]
            c1 = -1.0 if byz != ((c, r) in {(3, 2), (4, 3)}) else 1.0
            c2 = round((0.5 + 0.25 * c + 0.01 * r) * (1 + seed), 6) * (40 if byz else 1)
            accepted = (c1 > 0 and 0.5 < c2 < 2.0) or (byz and (c, r) == (4, 3))
            rows.append(
                {
                    "round": r,
                    "client": c,
                    "byzantine": int(byz),
                    "accepted": int(accepted),
                    "c1": c1,
                    "c2": "" if (c, r) == (5, 1) else c2,
                    "cos": 0.1,
                }
            )
    return rows


@pytest.fixture
def c1c2_dir(tmp_path: Path) -> Path:
    """DiverseFL under sign flip (seeds 0 and 1, eps 0.4/2.5) and no attack (defaults), and a
    Mean run whose decisions.csv has no c1/c2 columns (sorted before DiverseFL)."""
    root = tmp_path / "fig2"
    metrics = [{"round": 1, "test_accuracy": 0.5}]
    for seed in (1, 0):
        _run(
            root,
            "diversefl",
            "sign_flip",
            seed,
            metrics,
            _decisions("sign_flip", seed),
            aggregator_extra="eps1 = 0.4\neps2 = 2.5\n",
        )
    _run(root, "diversefl", "none", 0, metrics, _decisions("none", 0))
    plain = [
        {k: v for k, v in r.items() if k in DECISION_COLUMNS[:4]}
        for r in _decisions("sign_flip", 0)
    ]
    _run(root, "mean", "sign_flip", 0, metrics, plain, DECISION_COLUMNS[:4])
    return root


def _scatter(calls: list[Call]) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """{(panel, 'honest client' | 'Byzantine client'): sorted (x, y) points}, the kind told by
    the colour the figure legend gives it."""
    from matplotlib.colors import to_hex

    legend = calls[0].ax.figure.legends[0]
    kinds = {
        to_hex(h.get_color()): t.get_text()
        for h, t in zip(legend.legend_handles, legend.get_texts(), strict=True)
        if t.get_text().endswith("client")
    }
    assert set(kinds.values()) == {"honest client", "Byzantine client"}
    out: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for c in calls:
        kind = kinds[to_hex(c.artist.get_facecolor()[0][:3])]
        key = (_panel(c.ax).split("\n")[0], kind)
        assert key not in out, f"{key} drawn twice"
        out[key] = sorted((float(x), float(y)) for x, y in c.artist.get_offsets())
    return out


def _points(attack: str, clients: list[int], seed: int = 0) -> list[tuple[float, float]]:
    """(round, c1 * c2) of those clients' rows in decisions.csv as written, by hand."""
    return sorted(
        (float(r["round"]), r["c1"] * r["c2"])
        for r in _decisions(attack, seed)
        if r["client"] in clients and r["c2"] != ""
    )


def _flat(points: list[tuple[float, float]]) -> list[float]:
    return [v for p in points for v in p]


@pytest.mark.parametrize("clients", [None, 2, 0])
def test_c1c2_points_are_the_decisions(c1c2_dir: Path, tmp_path: Path, drawn, clients) -> None:
    """Scatter points are (round, c1 * c2) of seed 0's decisions.csv rows, split as documented."""
    # honest: the first `clients` honest ids (all by default); Byzantine: every Byzantine
    # client; the lowest seed's run is drawn, and the Mean run without c1/c2 is skipped
    plot_c1c2(c1c2_dir, out=tmp_path / "c1c2.png", clients=clients)
    pts = _scatter(drawn["scatter"])
    assert set(pts) == {
        (attack_name(t), k)
        for t in ("none", "sign_flip")
        for k in ("honest client", "Byzantine client")
    }
    for attack in ("none", "sign_flip"):
        honest = [c for c in range(N) if c not in BYZ[attack]]
        shown = honest if clients is None else honest[:clients]
        assert _flat(pts[(attack_name(attack), "honest client")]) == pytest.approx(
            _flat(_points(attack, shown))
        )
        assert _flat(pts[(attack_name(attack), "Byzantine client")]) == pytest.approx(
            _flat(_points(attack, BYZ[attack]))
        )
    # by hand: sign flip, client 1 (Byzantine) at round 2: -1 * 0.77 * 40 = -30.8;
    # client 4 at round 3 accepted: +1 * 1.53 * 40 = 61.2
    byz = pts[("Sign Flip Attack", "Byzantine client")]
    assert (2.0, pytest.approx(-30.8)) in byz and (3.0, pytest.approx(61.2)) in byz
    if clients == 2:  # honest ids 0, 2, 3, 5 -> 0 and 2; client 3's c1 = -1 at round 2 not shown
        assert _flat(pts[("Sign Flip Attack", "honest client")]) == pytest.approx(
            [1.0, 0.51, 1.0, 1.01, 2.0, 0.52, 2.0, 1.02, 3.0, 0.53, 3.0, 1.03]
        )


def test_c1c2_counts_and_thresholds(c1c2_dir: Path, tmp_path: Path, drawn) -> None:
    """Titles count decisions.csv's accepted/rejected rows by hand; eps lines at config values."""
    # counts over all rows (also the honest clients not drawn); dashed eps1 and dash-dot eps2
    # from config.toml's [aggregator], else 0.5 and 2
    plot_c1c2(c1c2_dir, out=tmp_path / "c1c2.png", clients=1)
    axes = {_panel(c.ax).split("\n")[0]: c.ax for c in drawn["scatter"]}
    for attack, (eps1, eps2) in {"sign_flip": (0.4, 2.5), "none": (0.5, 2.0)}.items():
        rows = _decisions(attack, 0)
        byz = [r for r in rows if r["byzantine"]]
        honest = [r for r in rows if not r["byzantine"]]
        ax = axes[attack_name(attack)]
        stats = ax.get_title().split("\n")[1:]
        first = (
            f"Byzantine accepted in {sum(r['accepted'] for r in byz)} of {len(byz)} client-rounds"
            if byz
            else "no Byzantine clients"
        )
        rejected = sum(not r["accepted"] for r in honest)
        assert stats == [first, f"honest rejected in {rejected} of {len(honest)}"]
        styles = {ln.get_linestyle(): _floats(ln.get_ydata()) for ln in ax.get_lines()}
        assert styles["--"] == [eps1, eps1] and styles["-."] == [eps2, eps2]
    # by hand: sign flip: Byzantine client 4 accepted at round 3 (1 of 2 x 3 rows); of the 4 x 3
    # honest rows only client 3 at round 2 (c1 < 0) is rejected; no attack: clients 3 at round
    # 2 and 4 at round 3 of 6 x 3
    assert [ax.get_title().split("\n")[1:] for ax in axes.values()] == [
        ["no Byzantine clients", "honest rejected in 2 of 18"],
        ["Byzantine accepted in 1 of 6 client-rounds", "honest rejected in 1 of 12"],
    ]


def test_c1c2_panel_data_reads_both_spellings_and_skips_non_finite() -> None:
    """The C1 x C2 panel's points and counts from decisions rows written as 0/1 or
    False/True, by hand: a non-finite C1 x C2 is counted but not drawn."""
    from diversefl.plots.c1c2 import _panel_data, _panel_title

    def row(rnd: int, client: int, byz: str, acc: str, c1: str, c2: str) -> dict[str, str]:
        return {"round": str(rnd), "client": str(client), "byzantine": byz, "accepted": acc,
                "c1": c1, "c2": c2}  # fmt: skip

    rows = [
        row(1, 0, "0", "1", "1", "0.5"),  # honest, accepted, drawn: (1, 0.5)
        row(1, 2, "False", "0", "-1", "3"),  # honest, rejected: (1, -3) when client 2 is drawn
        row(1, 5, "1", "1", "-1", "40"),  # Byzantine, accepted: (1, -40)
        row(2, 5, "True", "False", "1", "nan"),  # Byzantine, rejected, not drawn (NaN)
        row(2, 0, "0", "True", "1", ""),  # honest, accepted, not drawn (blank c2)
    ]
    everyone = _panel_data(rows, None)
    assert everyone.points == {False: ([1.0, 1.0], [0.5, -3.0]), True: ([1.0], [-40.0])}
    first = _panel_data(rows, 1)  # honest ids 0, 2 -> only client 0 drawn
    assert first.points == {False: ([1.0], [0.5]), True: ([1.0], [-40.0])}
    assert _panel_data(rows, 0).points[False] == ([], [])
    counts = (first.byz_accepted, first.byz_all, first.honest_rejected, first.honest_all)
    assert counts == (1, 2, 1, 3)
    assert _panel_title(1, "sign_flip", first) == (
        "(b) Sign Flip Attack\nByzantine accepted in 1 of 2 client-rounds\n"
        "honest rejected in 1 of 3"
    )


def test_two_experiments_under_one_folder_are_refused(tmp_path: Path) -> None:
    """Two grids' runs of the same cell (e.g. results/leaderboard/<grid>/mean__none__seed0)
    are not averaged as if they were seeds: the error names both directories."""
    rows = [{"round": 10, "test_accuracy": 0.9}]
    first = _run(tmp_path / "sorted", "mean", "none", 0, rows)
    second = _run(tmp_path / "dirichlet", "mean", "none", 0, rows)
    with pytest.raises(ValueError, match="are both mean / none / seed 0") as err:
        plot_curves(tmp_path, out=tmp_path / "x.png")
    assert str(first) in str(err.value) and str(second) in str(err.value)


def test_a_linked_view_of_the_same_runs_is_not_counted_twice(tmp_path: Path, drawn) -> None:
    """A figure view (symlinks to run dirs, as `diversefl reproduce` makes) beside the runs
    themselves: each run counts once."""
    runs = tmp_path / "root"
    for seed, acc in enumerate((0.2, 0.6)):
        d = _run(runs, "median", "gaussian", seed, [{"round": 10, "test_accuracy": acc}])
        view = runs / "figures" / "fig"
        view.mkdir(parents=True, exist_ok=True)
        (view / d.name).symlink_to(d.resolve(), target_is_directory=True)
    plot_curves(runs, out=tmp_path / "v.png")
    x, y = _lines(drawn["plot"])[("Gaussian Attack", "Median")]
    assert (x, y) == ([10], pytest.approx([0.4]))
    assert drawn["plot"][0].ax.figure.get_suptitle() == "(mean and min-max over 2 seeds)"


def _outside_ylim(drawn: dict[str, list[Call]]) -> list[str]:
    """Each drawn curve and band whose y-values leave its axes' visible y range."""
    bad = []
    for c in drawn["plot"]:
        (line,) = c.artist
        lo, hi = c.ax.get_ylim()
        if not all(lo <= y <= hi for y in _floats(line.get_ydata())):
            bad.append(f"{_panel(c.ax)} / {line.get_label()}: {line.get_ydata()} not in {lo, hi}")
    for c in drawn["fill_between"]:
        _, low, high = c.args
        lo, hi = c.ax.get_ylim()
        if not all(lo <= y <= hi for y in _floats(low) + _floats(high)):
            bad.append(f"{_panel(c.ax)} band: {low}-{high} not in {lo, hi}")
    return bad


def test_shared_y_axis_shows_every_panel(tmp_path: Path, drawn) -> None:
    """Panels share one y range, taken over all of them: a sign-flip curve below the no-attack
    panel's lowest value is not cut off by the first panel's limits."""
    root = tmp_path / "clip"
    values = {
        ("none", 0): [0.37, 0.39, 0.41],
        ("none", 1): [0.38, 0.40, 0.40],
        ("sign_flip", 0): [0.36, 0.28, 0.20],
        ("sign_flip", 1): [0.35, 0.30, 0.22],
    }
    for (attack, seed), accs in values.items():
        rows = [{"round": 10 * (i + 1), "test_accuracy": a} for i, a in enumerate(accs)]
        _run(root, "median", attack, seed, rows)
    plot_curves(root, out=tmp_path / "clip.png")
    assert len(drawn["plot"]) == 2 and len(drawn["fill_between"]) == 2
    assert _outside_ylim(drawn) == []
    axes = {c.ax for c in drawn["plot"]}
    assert len({ax.get_ylim() for ax in axes}) == 1  # still one shared range
    lo, hi = next(iter(axes)).get_ylim()
    assert -0.02 <= lo <= 0.20 and 0.41 <= hi <= 1.02


@pytest.mark.parametrize(
    "metric", [["test_accuracy"], ["test_accuracy", "tpr"], ["test_loss"], ["tpr"]]
)
def test_no_drawn_value_is_outside_its_axes(grid: Path, tmp_path: Path, drawn, metric) -> None:
    """Every curve and band of the grid lies within its panel's y range; an accuracy-like
    metric's range stays within [-0.02, 1.02]."""
    # the single-seed mean under sign flip (0.11 at round 10) lies below every value of the
    # first panel (median and DiverseFL, no attack, from 0.25)
    plot_curves(grid, metric=metric, out=tmp_path / "grid.png")
    assert drawn["plot"] and drawn["fill_between"]
    assert _outside_ylim(drawn) == []
    for c in drawn["plot"]:
        lo, hi = c.ax.get_ylim()
        if "loss" not in c.ax.get_ylabel().lower():
            assert -0.02 <= lo < hi <= 1.02


@pytest.mark.parametrize("agg", ["median", "oracle"])
def test_a_single_evaluation_is_drawn_as_a_marker(tmp_path: Path, drawn, agg: str) -> None:
    """A run evaluated once (e.g. 3 rounds, eval every 5) is one point: no segment to draw, so
    its line shows a marker at that point, even for a style without one (OracleSGD)."""
    from matplotlib.lines import _mark_every_path  # what Line2D.draw uses to place markers

    root = tmp_path / "once"
    for seed, acc in enumerate((0.31, 0.35)):
        _run(root, agg, "sign_flip", seed, [{"round": 3, "test_accuracy": acc}])
    plot_curves(root, out=tmp_path / "once.png")
    ((line,),) = [c.artist for c in drawn["plot"]]
    assert (_floats(line.get_xdata()), _floats(line.get_ydata())) == ([3.0], [pytest.approx(0.33)])
    assert line.get_marker() not in (None, "", " ", "None", "none")
    assert line.get_markersize() > 0
    assert line.get_visible() and line.get_alpha() in (None, 1.0)
    line.figure.canvas.draw()
    markevery = line.get_markevery()
    if markevery is not None:
        tpath, affine = line._get_transformed_path().get_transformed_points_and_affine()
        assert len(_mark_every_path(markevery, tpath, affine, line.axes).vertices) == 1
    assert _outside_ylim(drawn) == []


def test_heatmap_scale_fits_a_metric_outside_zero_one(tmp_path: Path, monkeypatch) -> None:
    """Accuracies keep the fixed 0-1 colour scale; a metric like wall_seconds gets its own
    range (on 0-1 every cell would be one saturated colour)."""
    import matplotlib.axes

    from diversefl.plots import plot_heatmap

    scales: list[tuple[float, float]] = []
    real = matplotlib.axes.Axes.imshow

    def imshow(ax, grid, **kwargs):
        scales.append((kwargs["vmin"], kwargs["vmax"]))
        return real(ax, grid, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", imshow)
    rows = [
        {"aggregator": a, "attack": t, "seed": 0, "final_test_accuracy": acc, "wall_seconds": sec}
        for a, t, acc, sec in [
            ("mean", "none", 0.9, 80.0),
            ("mean", "sign_flip", 0.2, 95.0),
            ("median", "none", 0.85, 120.0),
            ("median", "sign_flip", 0.6, 131.5),
        ]
    ]
    _write_csv(tmp_path / "sweep.csv", list(rows[0]), rows)
    plot_heatmap(tmp_path, out=tmp_path / "acc.png")
    plot_heatmap(tmp_path, metric="wall_seconds", out=tmp_path / "sec.png")
    assert scales == [(0.0, 1.0), (80.0, 131.5)]


def test_a_seed_that_diverged_does_not_cut_the_others(tmp_path: Path, drawn) -> None:
    """A seed whose loss went to inf/NaN ran to the end: the curve goes on to the last round
    (over the seeds with a finite value), unlike a seed that is still running."""
    root = tmp_path / "diverged"
    finite = [{"round": r, "test_accuracy": 0.5, "test_loss": 1.0} for r in (10, 20, 30)]
    blown = [
        {"round": 10, "test_accuracy": 0.3, "test_loss": 2.0},
        {"round": 20, "test_accuracy": 0.1, "test_loss": "inf"},
        {"round": 30, "test_accuracy": 0.1, "test_loss": "nan"},
    ]
    _run(root, "mean", "gaussian", 0, finite)
    _run(root, "mean", "gaussian", 1, blown)
    plot_curves(root, metric="test_loss", out=tmp_path / "loss.png")
    x, y = _lines(drawn["plot"])[("Gaussian Attack", "Mean")]
    assert x == [10, 20, 30] and y == pytest.approx([1.5, 1.0, 1.0])
