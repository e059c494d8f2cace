"""Same-value attack (paper Section 4.1): send ``sigma * 1``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import RoundContext
from diversefl.attacks.base import Attack


@dataclass
class SameValue(Attack):
    """Every entry of the message equals ``sigma`` (sigma_S)."""

    name: ClassVar[str] = "same_value"
    uses_honest_gradients: ClassVar[bool] = False
    uses_own_gradients: ClassVar[bool] = False
    sigma: float = 1e4  # sigma_S: 1e4 for softmax regression, 10 for neural networks

    def __post_init__(self) -> None:
        if not math.isfinite(self.sigma):
            raise ValueError(f"same_value: sigma must be finite, got {self.sigma}")

    def __call__(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        return torch.full_like(byzantine, self.sigma)
