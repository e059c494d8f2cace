"""Moved to :mod:`diversefl.experiments.reproduce`; this old path re-exports it (one release)."""

from diversefl.experiments.reproduce import *  # noqa: F403
