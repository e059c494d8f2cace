"""What ``[aggregator] name`` selects: a gradient aggregation rule (aggregators/) or a training
protocol whose clients keep state (protocols/, e.g. RSA). One registry over both, so the config,
the simulator and the Flower server resolve a name the same way."""

from __future__ import annotations

from typing import Any

from diversefl.aggregators import REGISTRY as AGGREGATORS
from diversefl.aggregators.base import Aggregator
from diversefl.protocols import PROTOCOLS, Protocol
from diversefl.registry import Registry

METHODS: Registry[type[Aggregator] | type[Protocol]] = Registry(
    "aggregator", {**AGGREGATORS, **PROTOCOLS}
)


def build_method(name: str, params: dict[str, Any] | None = None) -> Aggregator | Protocol:
    """Build the rule or protocol called ``name`` with its settings."""
    return METHODS.build(name, params)


def is_protocol(method: object) -> bool:
    """Whether a built method runs its own rounds (a protocol) instead of aggregating updates."""
    return isinstance(method, Protocol)
