"""Inf attack: every Byzantine client sends +inf in every coordinate, the crudest malformed
message (a crashed or overflowing client looks the same): every rule must survive it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import RoundContext
from diversefl.attacks.base import Attack


@dataclass
class Inf(Attack):
    """Every entry of every Byzantine message is ``+inf``.

    An aggregator's input check treats a non-finite row as a rejected client, so under this
    attack a rule aggregates the honest rows only; a rule that averaged the row in would step
    with infinities and wreck the model in one round. It has no paper of its own: it is the
    sanity baseline among ByzFL's attacks, added here for parity with that library.

    References
    ----------
    The ``Inf`` attack of the ByzFL library (EPFL), which has no paper of its own.
    """

    name: ClassVar[str] = "inf"
    uses_honest_gradients: ClassVar[bool] = False
    uses_own_gradients: ClassVar[bool] = False

    def __call__(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        return torch.full_like(byzantine, float("inf"))
