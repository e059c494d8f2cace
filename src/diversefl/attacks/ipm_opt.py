"""Optimised IPM: inner-product manipulation with its scale ``epsilon`` searched each round
against a named aggregation rule instead of fixed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from diversefl.aggregators.base import RoundContext
from diversefl.attacks.base import Attack
from diversefl.attacks.ipm import IPM
from diversefl.attacks.rule_search import best_factor, check_grid, check_rule_name, grid

IPM_DEFAULT_EPSILON = IPM().epsilon  # the fixed IPM's default, always among the candidates


@dataclass
class IPMOptimised(Attack):
    """Every Byzantine client sends ``-epsilon * mean(honest)`` (as
    :class:`~diversefl.attacks.ipm.IPM`) with the ``epsilon`` that moves the rule's output
    farthest from the honest mean.

    Each round the candidates are ``steps`` geometrically spaced values in
    ``[epsilon_min, epsilon_max]`` (the paper's two settings, 0.1 against Krum and 100 against
    the others, lie inside the default range) plus IPM's default 0.1; each is judged by running
    the rule named ``rule`` (built from the aggregator registry with its default settings, a
    fresh one each time) on the honest rows and the ``f`` messages, and the one whose output is
    farthest (Euclidean) from the honest mean wins (ties: the smaller epsilon). The rule is an
    attack setting because the round context does not say which rule the server runs; a config
    that leaves it unset gets the run's own aggregator, its pre-aggregators included
    (``nnm+krum``), at default settings.

    References
    ----------
    C. Xie, O. Koyejo, I. Gupta. "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner
    Product Manipulation", UAI 2019 (PMLR 115, 2020).
    V. Shejwalkar, A. Houmansadr. "Manipulating the Byzantine: Optimizing Model Poisoning
    Attacks and Defenses for Federated Learning", NDSS 2021 (AGR-tailored scaling).
    """

    name: ClassVar[str] = "ipm_opt"
    needs_other_clients: ClassVar[bool] = True  # the scale is tuned on the honest updates
    uses_own_gradients: ClassVar[bool] = False
    searches_rule: ClassVar[bool] = True  # a config's unset `rule` is the run's aggregator
    # rule or pipeline (nnm+krum) the factor is tuned against, at default settings; a config
    # leaving it unset gets its aggregator's name, krum only when built outside a config
    rule: str = "krum"
    epsilon_min: float = 0.01  # smallest scale tried (> 0: a geometric grid)
    epsilon_max: float = 100.0  # largest scale tried
    steps: int = 21  # geometrically spaced scales tried (plus IPM's default 0.1)

    def __post_init__(self) -> None:
        check_rule_name(self.name, self.rule)
        check_grid(self.name, self.epsilon_min, self.epsilon_max, self.steps, positive=True)

    def __call__(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        if byzantine.shape[0] == 0 or honest.shape[0] == 0:
            return byzantine.clone()
        f = byzantine.shape[0]
        mean = honest.mean(0)
        candidates = grid(self.epsilon_min, self.epsilon_max, self.steps, log=True)
        candidates = sorted({*candidates, IPM_DEFAULT_EPSILON})
        eps = best_factor(honest, f, ctx, self.rule, lambda e: -e * mean, candidates)
        return (-eps * mean).expand(f, -1).clone().to(byzantine.dtype)
