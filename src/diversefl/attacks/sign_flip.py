"""Sign-flip attack (paper Section 4.1): send the negated true gradient."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from diversefl.aggregators.base import RoundContext
from diversefl.attacks.base import Attack


@dataclass
class SignFlip(Attack):
    """Every entry of the client's own gradient has its sign flipped: ``z = -g``."""

    name: ClassVar[str] = "sign_flip"
    uses_honest_gradients: ClassVar[bool] = False

    def __call__(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        return -byzantine
