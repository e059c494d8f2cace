"""Moved to :mod:`diversefl.experiments.seed_spread`; this old path re-exports it (one release)."""

from diversefl.experiments.seed_spread import *  # noqa: F403
