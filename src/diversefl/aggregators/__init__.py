"""Aggregation rules, one file each, looked up by name.

>>> from diversefl import aggregators
>>> agg = aggregators.get("mean")
>>> result = agg(updates, aggregators.RoundContext(round=1, n=updates.shape[0], f=0,
...              generator=torch.Generator()))
"""

from __future__ import annotations

from typing import Any

from diversefl.aggregators.base import (
    Aggregate,
    Aggregator,
    AggregatorError,
    RoundContext,
    sanitize,
    settings,
)
from diversefl.aggregators.diversefl import DiverseFL
from diversefl.aggregators.mean import Mean
from diversefl.aggregators.oracle import Oracle
from diversefl.registry import build

REGISTRY: dict[str, type[Aggregator]] = {
    "mean": Mean,
    "oracle": Oracle,
    "diversefl": DiverseFL,
}


def get(name: str, **params: Any) -> Aggregator:
    """Build the aggregator called ``name`` with its settings (unknown keys are an error)."""
    return build(REGISTRY, "aggregator", name, params)


__all__ = [
    "REGISTRY",
    "Aggregate",
    "Aggregator",
    "AggregatorError",
    "RoundContext",
    "get",
    "sanitize",
    "settings",
]
