"""The error a Flower run stops with when too few nodes are usable."""

from __future__ import annotations


class FederationError(RuntimeError):
    """Too few usable nodes: the run cannot start, or cannot go on."""
