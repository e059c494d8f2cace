"""Pre-aggregators: transforms of the stacked updates that run before any rule
(``aggregator.pre = ["nnm"]`` before ``aggregator.name = "krum"``), one file each."""

from __future__ import annotations

from typing import Any

from diversefl.aggregators.pre.base import PreAggregator
from diversefl.aggregators.pre.bucketing import Bucketing
from diversefl.aggregators.pre.clipping import ARC, StaticClipping
from diversefl.aggregators.pre.nnm import NNM
from diversefl.registry import Registry

PRE: Registry[type[PreAggregator]] = Registry(
    "pre-aggregator",
    {"nnm": NNM, "bucketing": Bucketing, "clipping": StaticClipping, "arc": ARC},
)


def build_stages(spec: list[str | dict[str, Any]] | None) -> list[PreAggregator]:
    """The stages ``aggregator.pre`` names: each a name or ``{name = ..., setting = ...}``."""
    stages = []
    for i, item in enumerate(spec or []):
        if isinstance(item, str):
            name, params = item, {}
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            name, params = item["name"], {k: v for k, v in item.items() if k != "name"}
        else:
            raise ValueError(f"aggregator.pre[{i}]: a name or a table with a name, got {item!r}")
        PRE.check_name(name, f"aggregator.pre[{i}]")
        try:
            stages.append(PRE.build(name, params))
        except (ValueError, TypeError) as err:
            raise ValueError(f"aggregator.pre[{i}]: {err}") from None
    return stages


__all__ = ["ARC", "NNM", "PRE", "Bucketing", "PreAggregator", "StaticClipping", "build_stages"]
