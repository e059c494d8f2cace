"""Moved to :mod:`diversefl.experiments.sweep_status`; this old path re-exports it (one release)."""

from diversefl.experiments.sweep_status import *  # noqa: F403
