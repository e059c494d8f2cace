"""One command per paper figure: run the sweep behind it (skipping finished runs, resuming
interrupted ones) and draw it from the saved results."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diversefl.experiments.sweep import Cell, load_sweep, run_sweep

PRESETS = Path(__file__).parent.parent / "configs" / "paper"
DEFAULT_OUT = Path("runs") / "reproduce"  # where runs and figures go without --out
PAPER_AGGREGATORS = (
    "oracle",
    "median",
    "noisy_median",
    "bulyan",
    "rsa",
    "diversefl-s1",
    "diversefl-s3",
)
MAIN_ATTACKS = ("none", "gaussian", "sign_flip")
ALL_ATTACKS = ("none", "gaussian", "sign_flip", "same_value", "label_flip")


@dataclass(frozen=True)
class Figure:
    """A paper figure: which preset, which cells of its grid, and what to draw."""

    name: str
    preset: str
    description: str
    needs: str
    # what the full reproduction costs, for figures whose time `reproduce --list` does not
    # measure here (the CIFAR ones); the MNIST figures' is measured (experiments.calibrate)
    estimate: str = ""
    aggregators: tuple[str, ...] | None = None  # None = every aggregator of the preset
    attacks: tuple[str, ...] | None = None
    metrics: tuple[str, ...] = ("test_accuracy",)
    c1c2: bool = False
    extra: dict[str, str] = field(default_factory=dict)


FIGURES: dict[str, Figure] = {
    f.name: f
    for f in [
        Figure(
            "fig2",
            "mnist-mlp",
            "C1 x C2 of every client per round (MLP, DiverseFL s=1%)",
            "MNIST",
            aggregators=("diversefl-s1",),
            attacks=ALL_ATTACKS,
            metrics=(),
            c1c2=True,
        ),
        Figure(
            "fig3",
            "mnist-softmax",
            "softmax regression: no attack, Gaussian, sign flip",
            "MNIST",
            aggregators=PAPER_AGGREGATORS,
            attacks=MAIN_ATTACKS,
        ),
        Figure(
            "fig9",
            "mnist-softmax",
            "softmax regression, all five settings (supp. B.1)",
            "MNIST",
            aggregators=PAPER_AGGREGATORS,
            attacks=ALL_ATTACKS,
        ),
        Figure(
            "fig4",
            "mnist-mlp",
            "MLP: no attack, Gaussian, sign flip",
            "MNIST",
            attacks=MAIN_ATTACKS,
        ),
        Figure(
            "fig10",
            "mnist-mlp",
            "MLP, all five settings (supp. B.2)",
            "MNIST",
            attacks=ALL_ATTACKS,
        ),
        Figure(
            "fig7",
            "mnist-backdoor",
            "backdoor on MNIST: main and backdoor accuracy",
            "MNIST",
            metrics=("main_accuracy", "backdoor_accuracy"),
        ),
        Figure(
            "fig5",
            "cifar10-vgg11",
            "VGG11-GN on CIFAR-10: no attack, Gaussian, sign flip",
            "CIFAR-10 + GPU",
            estimate="hours on a GPU",
            attacks=MAIN_ATTACKS,
        ),
        Figure(
            "fig11",
            "cifar10-vgg11",
            "VGG11-GN on CIFAR-10, all five settings",
            "CIFAR-10 + GPU",
            estimate="hours on a GPU",
            attacks=ALL_ATTACKS,
        ),
        Figure(
            "fig6",
            "cifar100-vgg11",
            "VGG11-GN on CIFAR-100: no attack, Gaussian, sign flip",
            "CIFAR-100 + GPU",
            estimate="hours on a GPU",
            attacks=MAIN_ATTACKS,
        ),
        Figure(
            "fig12",
            "cifar100-vgg11",
            "VGG11-GN on CIFAR-100, all five settings",
            "CIFAR-100 + GPU",
            estimate="hours on a GPU",
            attacks=ALL_ATTACKS,
        ),
        Figure(
            "fig13",
            "cifar10-cnn",
            "small CNN on CIFAR-10 with Median and Bulyan (supp. C)",
            "CIFAR-10",
            estimate="hours on a CPU",
            attacks=ALL_ATTACKS,
        ),
    ]
}


def preset_cells(fig: Figure, rounds: int | None = None, device: str | None = None) -> list[Cell]:
    """Every cell of the figure's preset grid (figures sharing a preset share its runs)."""
    overrides = [] if rounds is None else [f"rounds={rounds}"]
    if device is not None:  # every cell's engine.device, as `sweep --device` sets it
        overrides.append(f"engine.device={json.dumps(device)}")
    return load_sweep(PRESETS / f"{fig.preset}.toml", overrides)


def figure_cells(fig: Figure, rounds: int | None = None, device: str | None = None) -> list[Cell]:
    """The cells of the figure's preset grid that the figure shows."""
    return [
        c for c in preset_cells(fig, rounds, device)
        if (fig.aggregators is None or c.aggregator in fig.aggregators)
        and (fig.attacks is None or c.attack in fig.attacks)
    ]  # fmt: skip


def mnist_figures() -> list[Figure]:
    """The figures on MNIST (what ``reproduce all`` runs), in :data:`FIGURES` order."""
    return [f for f in FIGURES.values() if f.needs == "MNIST"]


def run_root(root: Path, fig: Figure, rounds: int | None = None) -> Path:
    """Where the runs of ``fig``'s preset go: ``root/<preset>[-r<rounds>]``."""
    return root / (fig.preset + ("" if rounds is None else f"-r{rounds}"))


def reproduce(
    name: str,
    out: str | Path | None = None,
    data_dir: str | None = None,
    rounds: int | None = None,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
    jobs: int = 1,
    device: str | None = None,
) -> list[Path]:
    """Run (or finish) the runs behind figure ``name`` and draw it; returns the figure paths.

    Runs go to ``out/<preset>[-r<rounds>]/`` so figures sharing a preset share runs; its
    ``sweep.csv`` lists every finished run of the preset grid (what ``plot --table`` reads),
    whichever figure or sweep ran them. ``device`` (e.g. "cpu") replaces every preset cell's
    engine.device; the data and the device are checked before any run starts. Every MNIST
    figure at once, in one pool of ``jobs`` workers: :func:`~.reproduce_all.reproduce_all`.
    """
    if name not in FIGURES:
        raise ValueError(
            f"unknown figure {name!r}; known: {', '.join(FIGURES)}, and all (every MNIST "
            "figure: `diversefl reproduce all`, reproduce_all.reproduce_all in Python)"
        )
    fig = FIGURES[name]
    root = Path(out) if out is not None else DEFAULT_OUT
    runs = run_root(root, fig, rounds)
    grid = preset_cells(fig, rounds, device)
    cells = figure_cells(fig, rounds, device)
    echo(f"{name}: {fig.description}; {len(cells)} of the {len(grid)} runs in {runs}")
    # the whole preset grid with only this figure's cells chosen: sweep.csv lists every
    # finished run of the preset, whichever figure or sweep ran it
    rows = run_sweep(
        grid,
        runs,
        data_dir=data_dir,
        progress=progress,
        echo=echo,
        jobs=jobs,
        only=[glob.escape(c.dirname) for c in cells],
    )
    finished = {r["run_dir"] for r in rows}
    return draw_figure(fig, cells, finished, root, rounds, echo)


def draw_figure(
    fig: Figure,
    cells: list[Cell],
    finished: set[str],
    root: Path,
    rounds: int | None = None,
    echo: Callable[[str], Any] = print,
    again: str = "",
) -> list[Path]:
    """Draw ``fig`` from the runs of ``cells`` that are ``finished`` (run directory names
    under its run root) into ``root/<figure>[-r<rounds>].png``; says which runs it leaves out
    and the command that finishes them (``again``, default ``diversefl reproduce <figure>``)."""
    from diversefl import plots

    unfinished = [c.dirname for c in cells if c.dirname not in finished]
    if unfinished:  # skipped: another sweep process on the same directory runs them
        echo(
            f"note: {len(unfinished)} of {len(cells)} runs are not finished (another process "
            f"is running {', '.join(unfinished[:3])}{', ...' if len(unfinished) > 3 else ''}); "
            f"the figure leaves them out: run `{again or 'diversefl reproduce ' + fig.name}` "
            "again when they are"
        )
    view = _figure_view(fig, cells, finished, root, rounds)
    paths = []
    if fig.metrics:  # several metrics (the backdoor's two accuracies): panels of one figure
        paths.append(
            plots.plot_curves(
                view,
                metric=list(fig.metrics),
                out=root / f"{view.name}.png",
                title=f"{fig.name}: {fig.description}",
            )
        )
    if fig.c1c2:
        paths.append(plots.plot_c1c2(view, out=root / f"{view.name}.png", clients=10))
    for p in paths:
        echo(f"wrote {p}")
    return paths


def _figure_view(
    fig: Figure, cells: list[Cell], finished: set[str], root: Path, rounds: int | None
) -> Path:
    """``root/figures/<figure>[-r<rounds>]``: relative links to the figure's finished runs
    only (the run root may hold more of the preset's grid, or runs still in progress)."""
    runs = run_root(root, fig, rounds)
    view = root / "figures" / (fig.name + ("" if rounds is None else f"-r{rounds}"))
    view.mkdir(parents=True, exist_ok=True)
    for c in cells:  # finished runs only: a run in progress would be drawn cut short
        link = view / c.dirname
        if link.is_symlink() and (c.dirname not in finished or not link.exists()):
            link.unlink()  # not finished, or a link left broken by a moved run root
        if c.dirname in finished and not link.exists():
            # relative, so that the run root can be moved or copied with its figures
            target = os.path.relpath(runs / c.dirname, view)
            link.symlink_to(target, target_is_directory=True)
    return view
