"""`diversefl reproduce` end to end at a few rounds, on the real MNIST files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import hold_lock

from diversefl.cli import main
from diversefl.config import ConfigError
from diversefl.data import DataError
from diversefl.experiments.reproduce import FIGURES, figure_cells, reproduce


def test_every_figure_expands_to_valid_cells():
    for fig in FIGURES.values():
        cells = figure_cells(fig, rounds=5)
        assert cells, fig.name
        assert all(c.config.rounds == 5 for c in cells)


@pytest.mark.slow
def test_reproduce_fig7_runs_and_draws(mnist_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "rep"
    args = [
        "reproduce",
        "fig7",
        "--rounds",
        "5",
        "--out",
        str(out),
        "--quiet",
        "--data-dir",
        str(mnist_dir),
    ]
    assert main(args) == 0
    # one figure, main and backdoor accuracy side by side as in the paper's Fig. 7
    assert (out / "fig7-r5.png").stat().st_size > 5000
    assert len(list((out / "mnist-backdoor-r5").glob("*/summary.json"))) == 4
    # sweep.csv lists the preset grid's finished runs, so `plot --table` sees them
    csv_path = out / "mnist-backdoor-r5" / "sweep.csv"
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("aggregator,")
    csv_path.write_text("\n".join(lines[:2]) + "\n")  # as a `sweep --only` of one cell leaves it
    capsys.readouterr()
    assert main(args) == 0  # a second call finds every run done and only redraws
    assert capsys.readouterr().out.count("done already") == 4
    assert csv_path.read_text().splitlines() == lines  # brought up to date again


@pytest.mark.slow
def test_reproduce_says_when_another_process_holds_a_run(mnist_dir: Path, tmp_path: Path, capsys):
    """A run another sweep process is running is skipped, and the figure says it lacks it."""
    out = tmp_path / "rep"
    busy = out / "mnist-backdoor-r3" / figure_cells(FIGURES["fig7"], rounds=3)[0].dirname
    child = hold_lock(busy)
    args = ["reproduce", "fig7", "--rounds", "3", "--out", str(out), "--quiet",
            "--data-dir", str(mnist_dir)]  # fmt: skip
    try:
        assert main(args) == 0
        text = " ".join(capsys.readouterr().out.split())  # undo the console's line wrapping
        assert "running in pid" in text and "note: 1 of 4 runs are not finished" in text
        assert len(list((out / "mnist-backdoor-r3").glob("*/summary.json"))) == 3
        view = out / "figures" / "fig7-r3"  # the figure's links: finished runs only
        assert sorted(p.name for p in view.iterdir()) == sorted(
            c.dirname for c in figure_cells(FIGURES["fig7"], rounds=3) if c.dirname != busy.name
        )
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    assert main(args) == 0  # the lock is gone: the run happens, no note
    assert "note:" not in capsys.readouterr().out
    assert len(list((out / "mnist-backdoor-r3").glob("*/summary.json"))) == 4
    assert (view / busy.name).is_symlink()
    # relative links: the run root moves (or is copied) with its figures
    assert all(not os.readlink(link).startswith("/") for link in view.iterdir())
    moved = tmp_path / "moved"
    out.rename(moved)
    assert main([*args[:5], str(moved), *args[6:]]) == 0  # the same figure from the new place
    assert all((moved / "figures" / "fig7-r3" / c.dirname / "summary.json").is_file()
               for c in figure_cells(FIGURES["fig7"], rounds=3))  # fmt: skip


def test_unknown_figure_is_a_clear_error(capsys):
    assert main(["reproduce", "fig99"]) == 2
    assert "unknown figure 'fig99'" in capsys.readouterr().err


def test_device_overrides_every_cell_of_the_figure():
    fig = FIGURES["fig5"]  # the CIFAR-10 VGG11 preset runs on "cuda"
    assert {c.config.engine.device for c in figure_cells(fig, rounds=1)} == {"cuda"}
    assert {c.config.engine.device for c in figure_cells(fig, 1, device="cpu")} == {"cpu"}


def test_reproduce_checks_device_and_data_before_any_run(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """fig5 on a machine without CUDA: the advice names the device option, and with it the
    missing CIFAR-10 is found before any run starts; either way nothing is left behind."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = tmp_path / "data"
    data.mkdir()
    (data / "mnist").symlink_to(Path(mnist_dir, "mnist").resolve(), target_is_directory=True)
    out = tmp_path / "rep"
    quiet = {"out": out, "data_dir": str(data), "rounds": 1, "progress": False}
    with pytest.raises(ConfigError, match=r"no CUDA device .*\(use --device cpu\)"):
        reproduce("fig5", **quiet, echo=lambda m: None)
    assert not out.exists()
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        reproduce("fig5", **quiet, echo=lambda m: None, device="cpu")
    assert not out.exists()
