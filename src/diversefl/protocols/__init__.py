"""Training protocols that are not a gradient aggregation rule (clients keep model copies)."""

from __future__ import annotations

from diversefl.protocols.base import Protocol, ProtocolRound, ProtocolState
from diversefl.protocols.rsa import RSA
from diversefl.registry import Registry

PROTOCOLS: Registry[type[Protocol]] = Registry("protocol", {"rsa": RSA})

__all__ = ["PROTOCOLS", "RSA", "Protocol", "ProtocolRound", "ProtocolState"]
