"""Name -> class lookup with validated settings, shared by aggregators and attacks."""

from __future__ import annotations

import dataclasses
from typing import Any

import pydantic


class UnknownNameError(ValueError):
    """A config names an aggregator, attack or model that does not exist."""


def build(registry: dict[str, type], kind: str, name: str, params: dict[str, Any]) -> Any:
    """Instantiate ``registry[name](**params)``, validating types and rejecting unknown keys."""
    if name not in registry:
        allowed = ", ".join(sorted(registry))
        raise UnknownNameError(f"{kind}.name: unknown {kind} {name!r}; allowed: {allowed}")
    cls = registry[name]
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(params) - set(fields))
    if unknown:
        allowed = ", ".join(sorted(fields)) or "(none)"
        raise ValueError(
            f"{kind}.{unknown[0]}: unknown setting for {kind} {name!r}; allowed: {allowed}"
        )
    try:
        return pydantic.TypeAdapter(cls).validate_python(params)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        if key:
            raise ValueError(f"{kind}.{key}: {msg} (got {first.get('input')!r})") from None
        raise ValueError(f"{kind} {name!r}: {msg}") from None
