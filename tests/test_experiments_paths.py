"""The experiment tooling moved to ``diversefl.experiments``; the old module paths
(``diversefl.sweep`` ...) still import and hand out the very same objects, so scripts written
against them keep working for one release."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

import diversefl

# what callers imported from the old paths (tests, benchmarks, the CLI), written out by hand
OLD_API = {
    "sweep": [
        "Cell",
        "CellResult",
        "SWEEP_COLUMNS",
        "check_setup",
        "config_difference",
        "expand",
        "finished_summary",
        "format_duration",
        "load_sweep",
        "pace_text",
        "run_sweep",
        "select",
        "write_sweep_csv",
        "_check_dataset",
        "_check_device",
        "_run_cell",
    ],
    "sweep_status": [
        "CellProgress",
        "cell_progress",
        "done_matrix",
        "summary_lines",
        "sweep_progress",
        "time_left",
    ],
    "reproduce": ["FIGURES", "PRESETS", "Figure", "figure_cells", "preset_cells", "reproduce"],
    "seed_spread": ["seed_spread_table"],
    "detection": [
        "THRESHOLDS",
        "RunDetection",
        "cosine_table",
        "detection_table",
        "per_client_table",
        "percentile",
        "read_run",
        "read_sweep",
    ],
}


@pytest.mark.parametrize("name", sorted(OLD_API))
def test_old_path_re_exports_the_same_objects(name: str) -> None:
    old = importlib.import_module(f"diversefl.{name}")
    new = importlib.import_module(f"diversefl.experiments.{name}")
    for attr in OLD_API[name]:
        assert getattr(old, attr) is getattr(new, attr), f"diversefl.{name}.{attr}"
    # and every public function or class the moved module defines, not only those listed
    defined = [
        attr
        for attr, obj in vars(new).items()
        if not attr.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == new.__name__
    ]
    assert defined, f"diversefl.experiments.{name} defines nothing public"
    for attr in defined:
        assert getattr(old, attr) is getattr(new, attr), f"diversefl.{name}.{attr}"


def test_moved_reproduce_still_finds_the_paper_presets() -> None:
    """``PRESETS`` is relative to the module's file, which moved one folder down."""
    from diversefl.experiments.reproduce import FIGURES, PRESETS, figure_cells

    assert PRESETS == Path(diversefl.__file__).resolve().parent / "configs" / "paper"
    assert sorted(PRESETS.glob("*.toml")), f"no preset in {PRESETS}"
    assert all(figure_cells(fig) for fig in FIGURES.values())
