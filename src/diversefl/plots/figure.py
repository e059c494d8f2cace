"""What every figure needs: matplotlib (imported lazily, Agg backend), a grid of panels and
the path to write to."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

_SUFFIXES = {".png", ".pdf", ".svg"}


def _output_path(path: str | Path, out: str | Path | None, default_name: str) -> Path:
    """Where to write a figure; the suffix must be .png, .pdf or .svg."""
    target = Path(out) if out is not None else Path(path) / default_name
    if target.suffix.lower() not in _SUFFIXES:
        raise ValueError(
            f"unsupported figure format {target.suffix!r} for {target}; use .png, .pdf or .svg"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend; without matplotlib (an optional
    dependency) an error saying which extra to install."""
    try:
        import matplotlib
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "figures need matplotlib, which is not installed: pip install 'diversefl[plots]'",
            name=err.name,
        ) from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panel_grid(plt: Any, n: int, sharey: bool, min_width: float = 0.0) -> tuple[Any, list[Any]]:
    """A figure with ``n`` panels, at most 3 per row, unused axes hidden."""
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(max(4.0 * ncols, min_width), 3.1 * nrows + 0.7),
        sharey=sharey,
        squeeze=False,
        layout="constrained",
    )
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]
