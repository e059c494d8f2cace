"""DiverseFL (Prakash & Avestimehr): a per-client test of each update against a guiding
gradient the server computes on that client's own one-time sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, AggregatorError, RoundContext
from diversefl.aggregators.mean import mean_of


def diversefl_scores(guiding: Tensor, updates: Tensor) -> tuple[Tensor, Tensor]:
    """Per-client C1 = sign(guiding . update) (eq. 7) and C2 = |update| / |guiding| (eq. 8).

    A zero guiding gradient gives C2 = inf (or NaN for a zero update too), which fails eq. 10.
    """
    c1 = torch.sign((guiding * updates).sum(dim=1))
    c2 = updates.norm(dim=1) / guiding.norm(dim=1)
    return c1, c2


def diversefl_accept(c1: Tensor, c2: Tensor, eps1: float, eps2: float) -> Tensor:
    """Algorithm 1, line 10: accept iff C1 > 0 and eps1 < C2 < eps2 (NaN fails)."""
    return (c1 > 0) & (c2 > eps1) & (c2 < eps2)


@dataclass
class DiverseFL(Aggregator):
    """Average the updates that pass both of DiverseFL's conditions (eqs. 9-11).

    Client j is accepted when ``guiding_j . z_j > 0`` and ``eps1 < |z_j| / |guiding_j| < eps2``;
    the aggregate is the mean of the accepted updates. When every client is rejected the
    aggregate is zero, so that round's server step applies only the L2 decay
    ``theta -= lr * lambda * theta`` (no client is trusted, so the model does not move toward
    any of them). Per-client ``c1`` and ``c2`` are returned as scores every round.
    """

    name: ClassVar[str] = "diversefl"
    needs_guiding: ClassVar[bool] = True
    eps1: float = 0.5  # lower bound on |z| / |guiding| (paper: 0.5)
    eps2: float = 2.0  # upper bound on |z| / |guiding| (paper: 2)

    def __post_init__(self) -> None:
        if not 0 <= self.eps1 < self.eps2:
            raise ValueError(f"need 0 <= eps1 < eps2, got eps1={self.eps1}, eps2={self.eps2}")

    def check(self, n: int, f: int) -> None:
        """DiverseFL's test is per client, so any n >= 1 works (no bound on f)."""
        if n < 1:
            raise AggregatorError(f"diversefl: needs at least one client, got n={n}")

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        guiding = ctx.guiding.to(updates.dtype)
        if guiding.shape != updates.shape:
            raise AggregatorError(
                f"guiding gradients {tuple(guiding.shape)} do not match updates "
                f"{tuple(updates.shape)}"
            )
        c1, c2 = diversefl_scores(guiding, updates)
        accepted = diversefl_accept(c1, c2, self.eps1, self.eps2)
        return Aggregate(
            update=mean_of(updates, accepted), accepted=accepted, scores={"c1": c1, "c2": c2}
        )
