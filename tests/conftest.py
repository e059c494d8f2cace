"""Shared test fixtures: where the real datasets are, and tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# where pytest started: a relative $DIVERSEFL_DATA (the README's ../shared/data) is relative to
# it, also in tests that change the working directory before asking for the data
START = Path.cwd()


def real_data_dir() -> Path:
    """$DIVERSEFL_DATA, else the checkout's sibling shared/data (tests only); skip if absent."""
    env = os.environ.get("DIVERSEFL_DATA")
    if env:
        return (START / env).resolve()  # set explicitly (CI): a wrong path must fail, not skip
    fallback = REPO.parent / "shared" / "data"
    if not (fallback / "mnist").is_dir():
        pytest.skip(f"real data not found: set DIVERSEFL_DATA (no {fallback}/mnist either)")
    return fallback


@pytest.fixture
def mnist_dir() -> Path:
    """The data directory holding MNIST: skips only when none is configured; a wrong
    $DIVERSEFL_DATA fails (as :func:`real_data_dir`), so CI cannot pass by skipping."""
    return real_data_dir()


def tiny_config(**sections) -> dict:
    """A fast digits config (softmax, 6 clients); override sections by keyword."""
    cfg = {
        "seed": 0,
        "rounds": 30,
        "data": {"dataset": "digits", "partition": "sorted"},
        "model": {"name": "softmax"},
        "clients": {"n": 6, "batch": 0.5, "sample": 8},
        "optim": {"lr": 0.5, "schedule": "constant", "weight_decay": 0.0},
        "attack": {"name": "none"},
        "aggregator": {"name": "mean"},
        "eval": {"every": 5, "checkpoint_every": 10},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg[key] = {**cfg.get(key, {}), **value}
        else:
            cfg[key] = value
    return cfg


_HOLD_LOCK = (
    "import sys; from pathlib import Path; from diversefl.cell_lock import CellLock; "
    "lock = CellLock(Path(sys.argv[1])); print(lock.acquire(), flush=True); sys.stdin.read()"
)


def hold_lock(run_dir: Path):
    """A separate process that takes ``run_dir``'s cell lock (as another sweep process would)
    and keeps it until its stdin is closed (``child.stdin.close(); child.wait()``)."""
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(run_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "True"
    return child
