"""Min-Max attack (Shejwalkar & Houmansadr, NDSS 2021), and the search it shares with Min-Sum
(:mod:`diversefl.attacks.min_sum`): the honest mean pushed along a perturbation as far as a
distance bound allows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from diversefl.aggregators.base import RoundContext
from diversefl.aggregators.krum import pairwise_sq_dists
from diversefl.attacks.base import Attack
from diversefl.attacks.statistics import coordinate_std

Perturbation = Literal["std", "unit", "sign"]
Rule = Literal["max", "sum"]


def perturbation_vector(honest: Tensor, kind: Perturbation) -> Tensor:
    """The direction ``p`` the attack pushes the honest mean along (the paper's "inverse" ones).

    ``"std"``: ``-std(honest)`` (coordinate-wise population std); ``"unit"``:
    ``-mean / |mean|`` (zero if the mean is zero); ``"sign"``: ``-sign(mean)``.
    """
    mu = honest.mean(0)
    if kind == "std":
        return -coordinate_std(honest)
    if kind == "unit":
        norm = mu.norm()
        return -mu / norm if float(norm) > 0 else torch.zeros_like(mu)
    if kind == "sign":
        return -torch.sign(mu)
    raise ValueError(f"unknown perturbation {kind!r}; allowed: std, unit, sign")


def distance_terms(honest: Tensor, p: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Coefficients of ``||mu + gamma p - h_i||^2 = a_i + 2 gamma b_i + gamma^2 c`` and the
    pairwise squared distances ``||h_i - h_j||^2``, all in float64.

    Returns ``(a [m], b [m], c [], dist [m, m])`` for ``m`` honest rows.
    """
    h = honest.to(torch.float64)
    diff = h.mean(0)[None, :] - h
    p64 = p.to(torch.float64)
    return diff.square().sum(1), diff @ p64, p64.square().sum(), pairwise_sq_dists(honest)


def agr_agnostic_gamma(
    honest: Tensor,
    p: Tensor,
    rule: Rule,
    gamma_init: float = 10.0,
    tol: float = 1e-3,
    max_iter: int = 50,
    scale: float = 1.0,
) -> float:
    """Largest ``gamma >= 0`` for which ``mu + gamma p`` meets the rule's distance bound.

    ``rule="max"`` (Min-Max): ``max_i ||mal - h_i|| <= max_{i,j} ||h_i - h_j||``.
    ``rule="sum"`` (Min-Sum): ``sum_i ||mal - h_i||^2 <= max_i sum_j ||h_i - h_j||^2``.
    ``gamma = 0`` always satisfies both (the mean is in the honest convex hull and minimises
    the sum of squared distances), and each left side is convex in gamma, so the feasible
    gammas form an interval starting at 0: the search doubles ``gamma_init`` until it fails,
    then bisects until the bracket is narrower than ``tol``, at most ``max_iter`` steps in all.
    ``gamma_init`` and ``tol`` are in units of ``scale`` (:func:`gamma_scale`). The returned
    gamma is always feasible; ``gamma + tol * scale`` is not (unless the budget ran out).
    """
    a, b, c, dist = distance_terms(honest, p)
    if rule == "max":
        bound = dist.max()
    elif rule == "sum":
        bound = dist.sum(1).max()
    else:
        raise ValueError(f"unknown rule {rule!r}; allowed: max, sum")
    if float(c) == 0.0:
        return 0.0  # no perturbation: every gamma sends the mean
    if not scale > 0.0:
        return 0.0  # identical honest rows (zero spread): only the mean is within the bound
    gamma_init, tol = gamma_init * scale, tol * scale

    def feasible(gamma: float) -> bool:
        sq = a + 2.0 * gamma * b + gamma * gamma * c
        lhs = sq.max() if rule == "max" else sq.sum()
        return bool(lhs <= bound)

    lo, hi, steps = 0.0, float(gamma_init), 0
    while steps < max_iter and feasible(hi):
        lo, hi, steps = hi, 2.0 * hi, steps + 1
    if feasible(hi):
        return hi
    while steps < max_iter and hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if feasible(mid):
            lo = mid
        else:
            hi = mid
        steps += 1
    return lo


def gamma_scale(honest: Tensor, p: Tensor, kind: Perturbation) -> float:
    """The unit of the search's ``gamma_init`` and ``tol``: ``|std(honest)| / |p|``, so that a
    step of 1 moves the message as far as ``p = -std`` would, whatever ``p``'s own length
    (``-sign(mean)`` has length sqrt(d), while the feasible move is on the scale of the honest
    spread: an absolute tolerance would stop the search at gamma 0 for small gradients).
    Exactly 1 for ``p = -std``."""
    if kind == "std":
        return 1.0
    p_norm = float(p.to(torch.float64).norm())
    if p_norm == 0.0:
        return 1.0  # no perturbation: the search returns 0 before using the scale
    return float(coordinate_std(honest).to(torch.float64).norm()) / p_norm


def agr_agnostic_attack(
    honest: Tensor,
    f: int,
    rule: Rule,
    perturbation: Perturbation,
    gamma_init: float,
    tol: float,
    max_iter: int,
) -> Tensor:
    """The ``[f, d]`` messages of Min-Max (``rule="max"``) or Min-Sum (``rule="sum"``): every
    Byzantine client sends ``mean(honest) + gamma * p`` with gamma from
    :func:`agr_agnostic_gamma`."""
    p = perturbation_vector(honest, perturbation)
    scale = gamma_scale(honest, p, perturbation)
    gamma = agr_agnostic_gamma(honest, p, rule, gamma_init, tol, max_iter, scale)
    sent = honest.mean(0) + gamma * p
    return sent.expand(f, -1).clone()


@dataclass
class AgrAgnosticAttack(Attack):
    """Settings and call shared by Min-Max and Min-Sum (subclasses set ``rule`` and ``name``).

    References
    ----------
    V. Shejwalkar, A. Houmansadr. "Manipulating the Byzantine: Optimizing Model Poisoning
    Attacks and Defenses for Federated Learning", NDSS 2021 (AGR-agnostic attacks, Section IV).
    """

    rule: ClassVar[Rule] = "max"
    uses_own_gradients: ClassVar[bool] = False  # only the honest gradients shape the update
    needs_other_clients: ClassVar[bool] = True  # the honest spread and pairwise distances
    perturbation: Perturbation = "std"  # p: -std (paper's best), -unit mean or -sign(mean)
    # gamma_init and tol are in units of |std(honest)| / |p| (1 for p = -std): gamma_scale
    gamma_init: float = 10.0  # first gamma tried by the search (paper: 10)
    tol: float = 1e-3  # stop when the feasible/infeasible gamma bracket is this narrow
    max_iter: int = 50  # most feasibility checks (doubling + bisection)

    def __post_init__(self) -> None:
        if not self.gamma_init > 0:
            raise ValueError(f"gamma_init must be > 0, got {self.gamma_init}")
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")

    def __call__(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        if byzantine.shape[0] == 0 or honest.shape[0] == 0:
            return byzantine.clone()
        sent = agr_agnostic_attack(
            honest,
            byzantine.shape[0],
            self.rule,
            self.perturbation,
            self.gamma_init,
            self.tol,
            self.max_iter,
        )
        return sent.to(byzantine.dtype)


@dataclass
class MinMax(AgrAgnosticAttack):
    """Min-Max: every Byzantine client sends ``mal = mean(honest) + gamma * p`` with the largest
    gamma such that ``max_i ||mal - h_i|| <= max_{i,j} ||h_i - h_j||`` (the malicious update is
    no farther from any honest update than the two farthest honest updates are from each other).

    References
    ----------
    V. Shejwalkar, A. Houmansadr. "Manipulating the Byzantine: Optimizing Model Poisoning
    Attacks and Defenses for Federated Learning", NDSS 2021.
    """

    name: ClassVar[str] = "min_max"
    rule: ClassVar[Rule] = "max"
