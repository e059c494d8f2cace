"""Divide-and-Conquer (Shejwalkar & Houmansadr, NDSS 2021): drop the updates that stick out
most along the top singular direction of randomly subsampled, centred coordinates."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, AggregatorError, RoundContext
from diversefl.aggregators.mean import mean_of


def outlier_scores(sub: Tensor) -> Tensor:
    """DnC's score of each row of ``sub [n, b]``: the squared projection of the centred row on
    the top right singular vector of the centred matrix, in float64 ``[n]``."""
    centred = sub.double() - sub.double().mean(0, keepdim=True)
    if centred.shape[1] == 0:
        return torch.zeros(centred.shape[0], dtype=torch.float64, device=sub.device)
    top = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    return (centred @ top).square()


def dnc_kept(updates: Tensor, coordinate_sets: list[Tensor], removed: int) -> tuple[Tensor, Tensor]:
    """Clients kept by every iteration, one per coordinate set: each drops the ``removed``
    highest scores (ties: the higher index is dropped). Returns the kept mask ``[n]`` and the
    last iteration's scores ``[n]``."""
    n = updates.shape[0]
    kept = torch.ones(n, dtype=torch.bool, device=updates.device)
    scores = torch.zeros(n, dtype=torch.float64, device=updates.device)
    for coords in coordinate_sets:
        scores = outlier_scores(updates[:, coords.to(updates.device)])
        order = torch.sort(scores, stable=True).indices  # ascending; equal scores keep index order
        good = torch.zeros(n, dtype=torch.bool, device=updates.device)
        good[order[: n - removed]] = True
        kept &= good
    return kept, scores


def draw_coordinates(d: int, b: int, niters: int, generator: torch.Generator) -> list[Tensor]:
    """``niters`` sorted random subsets of ``min(b, d)`` distinct coordinates of ``d``."""
    return [
        torch.randperm(d, generator=generator, device=generator.device)[: min(b, d)].sort().values
        for _ in range(niters)
    ]


@dataclass
class DnC(Aggregator):
    """Divide-and-Conquer: spectral outlier removal on random coordinate subsets.

    Each of ``niters`` iterations draws ``b`` distinct coordinates (all of them when the model
    has fewer; drawn from ``ctx.generator``, so a run is seeded), centres the sub-matrix of
    the updates, takes its top right singular vector ``v`` and scores update ``i`` by
    ``((z_i - mean) . v)^2``; the ``floor(c f)`` highest scores are removed. The update is the
    mean of the clients kept by every iteration (zero if none). Defaults as in the paper:
    ``niters = 1``, ``c = 1``, ``b = 10000``. Needs ``n - floor(c f) >= 1``. ``accepted``
    marks the kept clients; scores ``{"dnc": the last iteration's outlier scores}``.

    References
    ----------
    V. Shejwalkar, A. Houmansadr. "Manipulating the Byzantine: Optimizing Model Poisoning
    Attacks and Defenses for Federated Learning", NDSS 2021 (Algorithm 2, DnC).
    """

    name: ClassVar[str] = "dnc"
    niters: int = 1  # iterations, each on a fresh random coordinate subset
    c: float = 1.0  # filtering fraction: floor(c * f) updates removed per iteration
    b: int = 10000  # coordinates subsampled per iteration (all when the model has fewer)

    def __post_init__(self) -> None:
        if self.niters < 1:
            raise AggregatorError(f"{self.name}: niters must be >= 1, got {self.niters}")
        if not self.c >= 0:
            raise AggregatorError(f"{self.name}: c must be >= 0, got {self.c}")
        if self.b < 1:
            raise AggregatorError(f"{self.name}: b must be >= 1, got {self.b}")

    def removed(self, f: int) -> int:
        """Updates removed per iteration: ``floor(c * f)`` (robust to float error)."""
        return math.floor(self.c * f + 1e-9)

    def check(self, n: int, f: int) -> None:
        super().check(n, f)
        if f < 0:
            raise AggregatorError(f"{self.name}: f must be >= 0, got f={f}")
        if n - self.removed(f) < 1:
            raise AggregatorError(
                f"{self.name}: removes floor(c f) = {self.removed(f)} of n={n} updates "
                f"(c={self.c}, f={f}); needs n - floor(c f) >= 1"
            )

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        coords = draw_coordinates(updates.shape[1], self.b, self.niters, ctx.generator)
        kept, scores = dnc_kept(updates, coords, self.removed(ctx.f))
        return Aggregate(update=mean_of(updates, kept), accepted=kept, scores={"dnc": scores})
