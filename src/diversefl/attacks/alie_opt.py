"""Optimised ALIE: A Little Is Enough with its shift ``z`` searched each round against a named
aggregation rule instead of fixed from (n, f)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from diversefl.aggregators.base import RoundContext
from diversefl.attacks.alie import alie_z_max
from diversefl.attacks.base import Attack
from diversefl.attacks.rule_search import best_factor, check_grid, check_rule_name, grid
from diversefl.attacks.statistics import coordinate_std


@dataclass
class ALIEOptimised(Attack):
    """Every Byzantine client sends ``mu - z * sigma`` (as :class:`~diversefl.attacks.alie.ALIE`)
    with the ``z`` that moves the rule's output farthest from the honest mean.

    Each round the candidates are ``steps`` evenly spaced values in ``[z_min, z_max]`` plus
    ALIE's fixed ``z_max(n, f)``, so the search never does worse than plain ALIE by its own
    measure; each is judged by running the rule named ``rule`` (built from the aggregator
    registry with its default settings, a fresh one each time) on the honest rows and the ``f``
    messages, and the one whose output is farthest (Euclidean) from the honest mean wins (ties:
    the smaller z). The rule is an attack setting because the round context does not say which
    rule the server runs; a config that leaves it unset gets the run's own aggregator, its
    pre-aggregators included (``nnm+krum``), at default settings. This is the
    "optimised" ALIE of Shejwalkar & Houmansadr's AGR-tailored framework, with the perturbation
    fixed to ALIE's ``-sigma`` and a grid search over its scale.

    References
    ----------
    G. Baruch, M. Baruch, Y. Goldberg. "A Little Is Enough: Circumventing Defenses For
    Distributed Learning", NeurIPS 2019.
    V. Shejwalkar, A. Houmansadr. "Manipulating the Byzantine: Optimizing Model Poisoning
    Attacks and Defenses for Federated Learning", NDSS 2021 (AGR-tailored scaling).
    """

    name: ClassVar[str] = "alie_opt"
    needs_other_clients: ClassVar[bool] = True  # mean and std of the honest updates
    uses_own_gradients: ClassVar[bool] = False
    searches_rule: ClassVar[bool] = True  # a config's unset `rule` is the run's aggregator
    # rule or pipeline (nnm+krum) the factor is tuned against, at default settings; a config
    # leaving it unset gets its aggregator's name, krum only when built outside a config
    rule: str = "krum"
    z_min: float = 0.0  # smallest shift tried, in honest stds
    z_max: float = 5.0  # largest shift tried, in honest stds
    steps: int = 21  # evenly spaced shifts tried in [z_min, z_max] (plus ALIE's z_max(n, f))

    def __post_init__(self) -> None:
        check_rule_name(self.name, self.rule)
        check_grid(self.name, self.z_min, self.z_max, self.steps, positive=False)

    def __call__(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        if byzantine.shape[0] == 0 or honest.shape[0] == 0:
            return byzantine.clone()
        f = byzantine.shape[0]
        mu, sigma = honest.mean(0), coordinate_std(honest)
        grid_z = grid(self.z_min, self.z_max, self.steps, log=False)
        candidates = sorted({*grid_z, alie_z_max(ctx.n, ctx.f)})
        z = best_factor(honest, f, ctx, self.rule, lambda z: mu - z * sigma, candidates)
        return (mu - z * sigma).expand(f, -1).clone().to(byzantine.dtype)
