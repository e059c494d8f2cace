"""Gaussian attack (paper Section 4.1): the message is pure N(0, sigma^2) noise."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import RoundContext
from diversefl.attacks.base import Attack


@dataclass
class Gaussian(Attack):
    """Each Byzantine entry is drawn i.i.d. from N(0, sigma^2)."""

    name: ClassVar[str] = "gaussian"
    uses_honest_gradients: ClassVar[bool] = False
    uses_own_gradients: ClassVar[bool] = False
    sigma: float = 1e4  # sigma_G: 1e4 for softmax regression, 10 for neural networks

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"gaussian: sigma must be finite and >= 0, got {self.sigma}")

    def __call__(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        noise = torch.randn(byzantine.shape, generator=ctx.generator, dtype=byzantine.dtype)
        return (self.sigma * noise).to(byzantine.device)
