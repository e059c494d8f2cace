"""Min-Sum attack (Shejwalkar & Houmansadr, NDSS 2021); the search is shared with Min-Max."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from diversefl.attacks.min_max import AgrAgnosticAttack, Rule


@dataclass
class MinSum(AgrAgnosticAttack):
    """Min-Sum: every Byzantine client sends ``mal = mean(honest) + gamma * p`` with the largest
    gamma such that ``sum_i ||mal - h_i||^2 <= max_i sum_j ||h_i - h_j||^2`` (the malicious
    update's summed squared distance to the honest ones is no larger than any honest update's).

    Settings and search as in :class:`diversefl.attacks.min_max.AgrAgnosticAttack`.

    References
    ----------
    V. Shejwalkar, A. Houmansadr. "Manipulating the Byzantine: Optimizing Model Poisoning
    Attacks and Defenses for Federated Learning", NDSS 2021.
    """

    name: ClassVar[str] = "min_sum"
    rule: ClassVar[Rule] = "sum"
