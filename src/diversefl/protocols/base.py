"""The protocol contract: a way of training that is not a rule over one round's gradients
(clients keep state of their own, e.g. RSA's model copies). The engine dispatches on this
type; the protocol's client-side state is passed in and returned, never hidden in the object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from diversefl.aggregators.base import AggregatorError

#: The clients' state between rounds: named tensors, saved with every checkpoint.
ProtocolState = dict[str, Any]


@dataclass(frozen=True)
class ProtocolRound:
    """What one protocol round produced: the new server model, the new client-side state and
    which clients' uploads counted."""

    theta: Tensor
    state: ProtocolState
    accepted: Tensor


@dataclass
class Protocol:
    """Base class: subclasses are dataclasses whose fields are the protocol's settings."""

    name: ClassVar[str] = "protocol"

    def check(self, n: int, f: int) -> None:
        """Raise :class:`AggregatorError` when the protocol cannot run for n clients."""
        if n < 1:
            raise AggregatorError(f"{self.name}: needs at least one client, got n={n}")

    def round(
        self,
        state: ProtocolState,
        theta: Tensor,
        *,
        lr: float,
        weight_decay: float,
        client_gradients: Callable[[Tensor], Tensor],
        attack: Callable[[Tensor], Tensor],
    ) -> ProtocolRound:
        """One round from ``state`` (empty before the first): ``client_gradients(models [n, d])``
        gives every client's gradient at its own model; ``attack(uploads [n, d])`` replaces the
        Byzantine rows of what the clients send."""
        raise NotImplementedError

    @staticmethod
    def initial_state(theta: Tensor, n: int) -> ProtocolState:
        """The state of ``n`` clients before the first round, the server model being ``theta``."""
        raise NotImplementedError
