"""A Little Is Enough (Baruch, Baruch & Goldberg, NeurIPS 2019): a small coordinate-wise shift
of the honest mean, hidden inside the honest clients' spread."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import ClassVar

from torch import Tensor

from diversefl.aggregators.base import RoundContext
from diversefl.attacks.base import Attack
from diversefl.attacks.statistics import coordinate_std


def alie_z_max(n: int, f: int) -> float:
    """The largest shift (in honest standard deviations) that still looks honest.

    ``s = floor(n / 2 + 1) - f`` honest clients must "support" the malicious value for it to
    sit with a majority, and ``z_max = Phi^{-1}((n - s) / n)`` with Phi the standard normal CDF
    (Baruch et al. 2019, Algorithm 3). ``s`` is clamped to ``[1, n - 1]`` so that z stays
    finite when the Byzantine clients alone are a majority (``s <= 0``) or ``n <= 2``.

    Parameters
    ----------
    n : int
        Number of clients (honest and Byzantine).
    f : int
        Number of Byzantine clients.

    Returns
    -------
    float
        ``z_max``; e.g. ``n = 23, f = 5`` gives ``s = 7`` and ``Phi^{-1}(16 / 23) = 0.5119``.
    """
    if n < 2:
        return 0.0
    s = math.floor(n / 2 + 1) - f
    s = min(max(s, 1), n - 1)
    return NormalDist().inv_cdf((n - s) / n)


@dataclass
class ALIE(Attack):
    """Every Byzantine client sends ``mu - z * sigma`` (coordinate-wise).

    ``mu`` and ``sigma`` are the coordinate-wise mean and POPULATION standard deviation
    (``correction=0``) of the honest gradients: the attacker here is omniscient and describes
    the honest spread it sees exactly (rather than estimating a distribution), and the
    population std stays defined with a single honest client. ``z`` defaults to
    :func:`alie_z_max` of ``(ctx.n, ctx.f)``.

    Sign convention: ``mu - z * sigma``, as in Baruch et al.'s convergence-prevention attack
    (Algorithm 3) and the reference implementations that followed it (e.g. Karimireddy et al.'s
    bucketing code), and consistent with the "inverse std" perturbation of Shejwalkar &
    Houmansadr (2021). Because ``sigma >= 0`` the shift has the same sign in every round on
    every coordinate; it is not aligned with or against the descent direction, and its harm
    comes from the bias accumulating over rounds while every coordinate stays within
    ``z * sigma`` of the honest mean (so median-, trimming- and distance-based rules keep it).

    References
    ----------
    G. Baruch, M. Baruch, Y. Goldberg. "A Little Is Enough: Circumventing Defenses For
    Distributed Learning", NeurIPS 2019.
    """

    name: ClassVar[str] = "alie"
    needs_other_clients: ClassVar[bool] = True  # mean and std of the honest updates
    uses_own_gradients: ClassVar[bool] = False
    z: float | None = None  # shift in honest stds; None = z_max from (n, f)

    def __call__(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        if byzantine.shape[0] == 0 or honest.shape[0] == 0:
            return byzantine.clone()
        z = alie_z_max(ctx.n, ctx.f) if self.z is None else self.z
        mu = honest.mean(0)
        sigma = coordinate_std(honest)
        sent = mu - z * sigma
        return sent.expand(byzantine.shape[0], -1).clone().to(byzantine.dtype)
