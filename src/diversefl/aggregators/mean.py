"""Plain averaging: the undefended baseline (what FedSGD does)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, RoundContext


def mean_of(updates: Tensor, mask: Tensor) -> Tensor:
    """Mean of the rows selected by ``mask``; zeros when no row is selected."""
    k = mask.sum()
    if int(k) == 0:
        return torch.zeros(updates.shape[1], dtype=updates.dtype, device=updates.device)
    return (updates * mask[:, None].to(updates.dtype)).sum(0) / k.to(updates.dtype)


@dataclass
class Mean(Aggregator):
    """Average every client's update (eq. 4 of the paper)."""

    name: ClassVar[str] = "mean"

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        accepted = torch.ones(updates.shape[0], dtype=torch.bool, device=updates.device)
        return Aggregate(update=updates.mean(0), accepted=accepted)
