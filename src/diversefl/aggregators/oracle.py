"""OracleSGD: the server knows who is Byzantine and averages only the honest updates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, RoundContext
from diversefl.aggregators.mean import mean_of


@dataclass
class Oracle(Aggregator):
    """Mean of the honest clients only: the ideal a defense is measured against."""

    name: ClassVar[str] = "oracle"
    attack_invariant: ClassVar[bool] = True  # the Byzantine rows never reach the average

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        if ctx.byzantine is None:
            accepted = torch.ones(updates.shape[0], dtype=torch.bool, device=updates.device)
        else:
            accepted = ~ctx.byzantine.to(updates.device)
        return Aggregate(update=mean_of(updates, accepted), accepted=accepted)
