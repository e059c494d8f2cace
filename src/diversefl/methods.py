"""What ``[aggregator] name`` selects: a gradient aggregation rule (aggregators/) or a training
protocol whose clients keep state (protocols/, e.g. RSA). One registry over both, so the config,
the simulator and the Flower server resolve a name the same way."""

from __future__ import annotations

from typing import Any

from diversefl.aggregators import REGISTRY as AGGREGATORS
from diversefl.aggregators.base import Aggregator, AggregatorError
from diversefl.aggregators.pipeline import Pipeline
from diversefl.aggregators.pre import build_stages
from diversefl.protocols import PROTOCOLS, Protocol
from diversefl.registry import CombinedRegistry, Registry


def _part(entry: object) -> int:
    """Where a new method goes: a protocol to PROTOCOLS, a rule to the aggregators."""
    return 1 if isinstance(entry, type) and issubclass(entry, Protocol) else 0


#: Every rule and protocol, live: a rule registered in ``aggregators.REGISTRY`` (or here) at
#: any time is a valid ``aggregator.name``.
METHODS: Registry[type[Aggregator] | type[Protocol]] = CombinedRegistry(
    "aggregator", [AGGREGATORS, PROTOCOLS], route=_part
)


def build_method(
    name: str,
    params: dict[str, Any] | None = None,
    pre: list[str | dict[str, Any]] | None = None,
) -> Aggregator | Protocol:
    """Build the rule or protocol called ``name`` with its settings, behind the
    pre-aggregators ``pre`` (``aggregator.pre``) when there are any."""
    method = METHODS.build(name, params)
    if not pre:
        return method
    if isinstance(method, Protocol):
        raise AggregatorError(
            f"aggregator.pre: {name!r} is a protocol whose clients keep model copies; "
            "pre-aggregators run before a gradient aggregation rule"
        )
    return Pipeline(build_stages(pre), method)


def is_protocol(method: object) -> bool:
    """Whether a built method runs its own rounds (a protocol) instead of aggregating updates."""
    return isinstance(method, Protocol)
