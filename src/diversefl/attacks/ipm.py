"""Inner-product manipulation (Xie, Koyejo & Gupta, UAI 2019 / PMLR 2020): a small negative
multiple of the honest mean."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from diversefl.aggregators.base import RoundContext
from diversefl.attacks.base import Attack


@dataclass
class IPM(Attack):
    """Every Byzantine client sends ``-epsilon * mean(honest)``.

    With a small ``epsilon`` the messages stay close to the honest ones (so distance- and
    median-based rules keep them) while making the inner product of the aggregate with the true
    gradient negative once enough of them are averaged in.

    References
    ----------
    C. Xie, O. Koyejo, I. Gupta. "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner
    Product Manipulation", UAI 2019 (PMLR 115, 2020).
    """

    name: ClassVar[str] = "ipm"
    uses_own_gradients: ClassVar[bool] = False
    epsilon: float = 0.1  # scale of the negated honest mean (paper: 0.1 against Krum, 100 else)

    def __call__(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        if byzantine.shape[0] == 0 or honest.shape[0] == 0:
            return byzantine.clone()
        sent = -self.epsilon * honest.mean(0)
        return sent.expand(byzantine.shape[0], -1).clone().to(byzantine.dtype)
