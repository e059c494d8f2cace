"""Moved to :mod:`diversefl.experiments.detection`; this old path re-exports it (one release)."""

from diversefl.experiments.detection import *  # noqa: F403
