"""Moved to :mod:`diversefl.experiments.sweep`; this old path re-exports it (one release)."""

from diversefl.experiments.sweep import *  # noqa: F403
from diversefl.experiments.sweep import _check_dataset, _check_device, _run_cell  # noqa: F401
