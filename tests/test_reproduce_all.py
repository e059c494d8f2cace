"""`diversefl reproduce all` (every MNIST figure's runs in one pool, then every figure) and the
per-round times measured on this machine that `reproduce --list` estimates with."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import pytest

from diversefl.cli import main
from diversefl.config import load_config
from diversefl.experiments import calibrate, reproduce_all
from diversefl.experiments.reproduce import FIGURES, PRESETS, figure_cells, mnist_figures
from diversefl.experiments.sweep import format_duration

PER_ROUND = {"mnist-softmax": 0.05, "mnist-mlp": 0.2, "mnist-backdoor": 0.3}


def _fake_round_seconds(calls: list[int], per_round: dict[str, float] = PER_ROUND):
    def fake(configs, threads, refresh=False, echo=print):
        calls.append(threads)
        return {name: per_round[name] for name in configs}

    return fake


def _plain(text: str) -> str:
    return " ".join(text.split())  # undo the console's line wrapping


@pytest.mark.slow  # 2 s or more on a 2-core CPU
def test_list_estimates_are_runs_x_rounds_x_the_measured_seconds_per_round(monkeypatch, capsys):
    calls: list[int] = []
    monkeypatch.setattr(reproduce_all, "round_seconds", _fake_round_seconds(calls))
    monkeypatch.setattr(reproduce_all, "threads_per_run", lambda jobs: 4 // jobs)
    estimates = reproduce_all.figure_estimates(PER_ROUND)
    for fig in mnist_figures():  # a plain sum over the figure's cells
        cells = figure_cells(fig)
        expected = sum(c.config.rounds * PER_ROUND[fig.preset] for c in cells)
        assert estimates[fig.name] == (len(cells), pytest.approx(expected))
    assert estimates["fig9"] == (35, pytest.approx(35 * 1000 * 0.05))  # by hand
    assert estimates["all"] == (69, pytest.approx((35 * 0.05 + 30 * 0.2 + 4 * 0.3) * 1000))

    assert main(["reproduce", "--list"]) == 0
    out = _plain(capsys.readouterr().out)
    assert calls == [4]  # measured at the threads one run gets with --jobs 1
    assert re.search(r"fig10 .*\│ 30 \│ ~100 min", out)  # 30 x 1000 x 0.2 s = 6000 s
    assert re.search(r"fig3 .*\│ 21 \│ ~18 min", out)  # 21 x 1000 x 0.05 s = 1050 s
    assert re.search(r"all .*\│ 69 \│ ~" + format_duration(8950), out)
    assert "fig5" in out and "hours on a GPU" in out  # not measured here: the note stays
    assert "mnist-mlp 200.0 ms" in out and str(calibrate.cache_path()) in _plain(out)

    assert main(["reproduce", "--list", "--jobs", "2"]) == 0
    out = _plain(capsys.readouterr().out)
    assert calls == [4, 2] and re.search(r"fig10 .*\│ 30 \│ ~50 min", out)  # two at once


def test_round_seconds_are_measured_once_per_machine_and_then_read_from_the_cache(
    tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    measured: list[str] = []

    def fake_measure(config, threads):
        measured.append(config.model.name)
        return {"softmax": 0.01, "mlp": 0.1}[config.model.name]

    monkeypatch.setattr(calibrate, "measure_round_seconds", fake_measure)
    configs = {p: load_config(PRESETS / f"{p}.toml") for p in ("mnist-softmax", "mnist-mlp")}
    quiet = {"echo": lambda m: None}
    assert calibrate.round_seconds(configs, 1, **quiet) == {"mnist-softmax": 0.01, "mnist-mlp": 0.1}
    assert measured == ["softmax", "mlp"]
    path = tmp_path / "cache" / "diversefl" / "round-times.json"
    assert calibrate.cache_path() == path
    saved = json.loads(path.read_text())
    assert saved == {calibrate.machine_key(1): {"mnist-softmax": 0.01, "mnist-mlp": 0.1}}
    assert "torch" in calibrate.machine_key(1) and calibrate.machine_key(1).endswith("threads 1")

    assert calibrate.round_seconds(configs, 1, **quiet)["mnist-mlp"] == 0.1
    assert measured == ["softmax", "mlp"]  # cached: nothing measured again
    calibrate.round_seconds(configs, 2, **quiet)  # another thread count: measured anew
    calibrate.round_seconds(configs, 1, refresh=True, **quiet)  # --recalibrate
    assert len(measured) == 6
    path.write_text("not json")  # a damaged cache is measured over, not an error
    assert calibrate.round_seconds(configs, 1, **quiet)["mnist-softmax"] == 0.01


def test_a_real_calibration_run_times_the_presets_rounds():
    config = load_config(PRESETS / "mnist-softmax.toml")
    seconds = calibrate.measure_round_seconds(config, threads=1)
    assert 0 < seconds < 5  # a softmax round of 23 clients: milliseconds, not seconds


def _small_figures(monkeypatch) -> None:
    """Each MNIST figure cut to a few cells of its preset, sharing runs as the real ones do."""
    small = {
        "fig2": {"attacks": ("none", "sign_flip")},
        "fig3": {"aggregators": ("oracle", "median"), "attacks": ("none",)},
        "fig9": {"aggregators": ("oracle", "median"), "attacks": ("none", "sign_flip")},
        "fig4": {"aggregators": ("oracle", "diversefl-s1"), "attacks": ("none",)},
        "fig10": {"aggregators": ("oracle", "diversefl-s1"), "attacks": ("none", "sign_flip")},
        "fig7": {"aggregators": ("oracle", "mean")},
    }
    for name, cut in small.items():
        monkeypatch.setitem(FIGURES, name, dataclasses.replace(FIGURES[name], **cut))


@pytest.mark.slow
def test_reproduce_all_runs_each_figures_runs_once_longest_first_and_draws_them(
    mnist_dir: Path, tmp_path: Path, monkeypatch, capsys
):
    _small_figures(monkeypatch)
    slow_softmax = {"mnist-softmax": 1.0, "mnist-mlp": 0.001, "mnist-backdoor": 0.002}
    monkeypatch.setattr(reproduce_all, "round_seconds", _fake_round_seconds([], slow_softmax))
    out = tmp_path / "rep"
    args = ["reproduce", "all", "--rounds", "2", "--out", str(out), "--quiet",
            "--data-dir", str(mnist_dir)]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    done = re.findall(r"\[(\d+)/10\] ([\w-]+)/(\S+):", text)
    assert len(done) == 10 and len({(p, d) for _, p, d in done}) == 10  # each run once
    # longest first by the (here: made up) measured seconds per round: softmax, backdoor, MLP
    assert [p for _, p, _ in done] == ["mnist-softmax"] * 4 + ["mnist-backdoor"] * 2 + [
        "mnist-mlp"
    ] * 4
    for preset, runs in (("mnist-softmax", 4), ("mnist-mlp", 4), ("mnist-backdoor", 2)):
        assert len(list((out / f"{preset}-r2").glob("*/summary.json"))) == runs
        with (out / f"{preset}-r2" / "sweep.csv").open() as fh:
            assert len(list(csv.DictReader(fh))) == runs
    for fig in ("fig2", "fig3", "fig9", "fig4", "fig10", "fig7"):
        assert (out / f"{fig}-r2.png").stat().st_size > 5000, fig
    walls = {
        (p.parent.parent.name, p.parent.name): json.loads(p.read_text())["wall_seconds"]
        for p in out.glob("*-r2/*/summary.json")
    }
    plain = _plain(text)
    assert "reproduce all: 10 runs (10 run now) in" in plain
    assert f"the runs took {sum(walls.values()):,.1f} cell-seconds" in plain
    fig9 = sum(w for (p, _), w in walls.items() if p == "mnist-softmax-r2")
    assert re.search(rf"fig9 4 {fig9:,.1f} {fig9 / sum(walls.values()):.0%}", plain)
    assert re.search(r"fig3 2 [\d,.]+ \d+%", plain) and re.search(r"fig7 2 ", plain)

    # a second call finds every run done and only draws; a lost run is run again, in a pool
    lost = out / "mnist-mlp-r2" / "oracle__none__seed0"
    for path in sorted(lost.rglob("*"), reverse=True):
        path.unlink() if not path.is_dir() else path.rmdir()
    lost.rmdir()
    assert main([*args, "--jobs", "2"]) == 0
    text = _plain(capsys.readouterr().out)
    assert text.count("done already") == 9 and "[1/1] mnist-mlp/oracle__none__seed0" in text
    assert "reproduce all: 10 runs (1 run now)" in text


@pytest.mark.slow
def test_reproduce_all_with_pack_runs_the_softmax_runs_together_and_matches_them_alone(
    mnist_dir: Path, tmp_path: Path, monkeypatch, capsys
):
    _small_figures(monkeypatch)
    monkeypatch.setattr(reproduce_all, "round_seconds", _fake_round_seconds([]))
    common = ["--rounds", "3", "--quiet", "--data-dir", str(mnist_dir)]
    assert main(["reproduce", "all", "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["reproduce", "all", "--pack", "auto", "--out", str(tmp_path / "p"), *common]) == 0
    text = _plain(capsys.readouterr().out)
    assert "reproduce all: 10 runs (10 run now)" in text
    sizes: dict[str, set[int]] = {}
    for path in sorted((tmp_path / "p").glob("*-r3/*/summary.json")):
        packed = json.loads(path.read_text())
        sizes.setdefault(path.parent.parent.name, set()).add(packed.get("pack_size", 1))
        alone = json.loads((tmp_path / "a" / path.relative_to(tmp_path / "p")).read_text())
        # the same runs up to float rounding (the packed matmuls are wider)
        assert packed["final_test_accuracy"] == pytest.approx(
            alone["final_test_accuracy"], abs=2e-3
        )
        assert packed["best_test_accuracy"] == pytest.approx(alone["best_test_accuracy"], abs=2e-3)
    # the four softmax runs (one seed, one batch draw) form one pack; the MLPs run alone
    assert sizes == {"mnist-softmax-r3": {4}, "mnist-mlp-r3": {1}, "mnist-backdoor-r3": {1}}
    for fig in ("fig3", "fig9", "fig10"):
        assert (tmp_path / "p" / f"{fig}-r3.png").exists()


def test_pack_is_refused_for_a_single_figure(capsys):
    assert main(["reproduce", "fig9", "--pack", "2"]) != 0
    assert "only with reproduce all" in _plain(capsys.readouterr().err)
