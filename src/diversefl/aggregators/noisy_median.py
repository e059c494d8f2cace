"""Noisy median (Chen et al., 2019): clients add Gaussian noise, the server takes the
coordinate-wise median."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, AggregatorError, RoundContext
from diversefl.aggregators.median import coordinate_median


@dataclass
class NoisyMedian(Aggregator):
    """N-Median: each client uploads ``z_j = g_j + xi_j``, the server takes the median.

    The noise entries ``xi_j(u)`` are drawn i.i.d. from ``N(0, sigma^2)`` (supplementary A of
    the DiverseFL paper, "Noisy Median", after Chen et al., 2019). The noise is added in
    :meth:`prepare`, which the simulator applies to every computed gradient before the attack
    replaces the Byzantine rows, so only benign uploads carry it. The server step is the
    coordinate-wise median of :mod:`diversefl.aggregators.median` (even ``n``: mean of the two
    middle values); ``accepted`` is all True, as for the median.

    Parameters
    ----------
    sigma
        Standard deviation ``sigma_N`` of the client-side Gaussian noise.
    """

    name: ClassVar[str] = "noisy_median"

    sigma: float = 100.0  # sigma_N: paper uses 100 softmax, 0.01 MNIST MLP, 0.1 CIFAR VGG11

    def __post_init__(self) -> None:
        if not self.sigma >= 0:
            raise AggregatorError(f"{self.name}: sigma must be >= 0, got {self.sigma}")

    def prepare(self, grads: Tensor, ctx: RoundContext) -> Tensor:
        """Return ``grads + N(0, sigma^2)`` noise drawn from ``ctx.generator``."""
        if self.sigma == 0:
            return grads
        gen = ctx.generator
        noise = torch.randn(grads.shape, generator=gen, dtype=grads.dtype, device=gen.device)
        return grads + self.sigma * noise.to(grads.device)

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        accepted = torch.ones(updates.shape[0], dtype=torch.bool, device=updates.device)
        return Aggregate(update=coordinate_median(updates), accepted=accepted)
