"""Seconds per training round on the machine at hand, measured once per named setting (the
paper's presets: ``mnist-softmax``, ``mnist-mlp``, ``mnist-backdoor``) by a short run on random
data of the dataset's shape, and cached as JSON under the user's cache directory keyed by the
CPU model, the torch version and the thread count. What ``reproduce --list`` and ``reproduce
all`` estimate with."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from diversefl.config import Config, apply_overrides, make_config, to_toml_dict
from diversefl.results import atomic_write_bytes

CACHE_FILE = "round-times.json"
CALIBRATION_ROUNDS = 30  # three windows of WINDOW rounds: a warm-up (allocations) and two timed
WINDOW = 10  # rounds per timed window (the first one warms up); also the test interval
# the datasets a calibration can imitate: training rows, test rows, one example's shape, classes
SHAPES: dict[str, tuple[int, int, tuple[int, ...], int]] = {
    "mnist": (60_000, 10_000, (1, 28, 28), 10),
    "fashion-mnist": (60_000, 10_000, (1, 28, 28), 10),
}


def cache_path() -> Path:
    """``$XDG_CACHE_HOME/diversefl/round-times.json`` (``~/.cache`` without the variable)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "diversefl" / CACHE_FILE


def machine_key(threads: int) -> str:
    """What a measured per-round time holds for: this CPU model, torch version and threads."""
    import torch

    from diversefl.engine.runner import cpu_model

    return f"{cpu_model()} | torch {torch.__version__} | threads {threads}"


def _calibration_config(config: Config) -> Config:
    """``config`` cut to :data:`CALIBRATION_ROUNDS` rounds, tested every :data:`WINDOW`
    (as the paper's presets are), on the CPU, without checkpoints."""
    overrides = [
        f"rounds={CALIBRATION_ROUNDS}",
        f"eval.every={WINDOW}",
        f"eval.checkpoint_every={CALIBRATION_ROUNDS}",
        "engine.device=cpu",
    ]
    return make_config(apply_overrides(to_toml_dict(config), overrides))


def measure_round_seconds(config: Config, threads: int) -> float:
    """Wall seconds per round of ``config``'s federation with ``threads`` torch threads, on
    random data of its dataset's shape (a round's cost does not depend on the pixel values),
    written nowhere: the mean round of the quicker of rounds 11..20 and 21..30, tests
    included (every 10 rounds, as in the paper's presets)."""
    import torch

    from diversefl.api import run

    if config.data.dataset not in SHAPES:
        raise ValueError(f"no calibration for dataset {config.data.dataset!r} (known: mnist)")
    n_train, n_test, shape, classes = SHAPES[config.data.dataset]
    gen = torch.Generator().manual_seed(0)
    data = (
        torch.rand(n_train, *shape, generator=gen),
        torch.arange(n_train) % classes,
        torch.rand(n_test, *shape, generator=gen),
        torch.arange(n_test) % classes,
    )
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = run(_calibration_config(config), out=False, progress=False, data=data)
    finally:
        torch.set_num_threads(before)
    seconds = {int(row["round"]): float(row["seconds"]) for row in result.metrics}
    ends = range(2 * WINDOW, CALIBRATION_ROUNDS + 1, WINDOW)
    # the quicker window: a burst of other work on a shared machine slows one, not both
    return min(seconds[r] - seconds[r - WINDOW] for r in ends) / WINDOW


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache's JSON object, or an empty one when it is missing or not ours (rewritten)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cached(table: Any, name: str) -> float | None:
    """A positive number cached for ``name`` in a machine's ``table``, else None."""
    value = table.get(name) if isinstance(table, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def round_seconds(
    configs: Mapping[str, Config],
    threads: int,
    refresh: bool = False,
    echo: Callable[[str], Any] = print,
) -> dict[str, float]:
    """Seconds per round of each named config of ``configs`` at ``threads`` threads: cached
    ones read from :func:`cache_path`, the others (all of them with ``refresh``) measured
    (:func:`measure_round_seconds`) and cached under their name."""
    path = cache_path()
    cache = _read_cache(path)
    key = machine_key(threads)
    saved = cache.get(key)
    table: dict[str, Any] = saved if isinstance(saved, dict) else {}
    out: dict[str, float] = {}
    for name, config in configs.items():
        known = None if refresh else _cached(table, name)
        if known is None:
            echo(f"measuring {name}: {CALIBRATION_ROUNDS} rounds, threads {threads} ...")
            known = measure_round_seconds(config, threads)
            table[name] = round(known, 6)
        out[name] = known
    cache[key] = table
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(cache, indent=1, sort_keys=True) + "\n").encode())
    except OSError as err:  # a read-only home: the numbers still hold for this command
        echo(f"note: could not cache the per-round times in {path} ({err})")
    return out
