"""Bulyan (Guerraoui et al., 2018): recursive Krum selection, then a median-centred trimmed mean.

Distances follow the convention of :mod:`diversefl.aggregators.krum`: one float64 matrix of
exact pairwise squared distances per round, reused (masked) by every recursive Krum step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, AggregatorError, RoundContext
from diversefl.aggregators.krum import neighbour_count, pairwise_sq_dists, sum_of_nearest
from diversefl.aggregators.trimmed_mean import closest_to_median_mean


def bulyan_select(dist: Tensor, f: int, theta: int) -> Tensor:
    """Indices of the ``theta`` updates picked by recursive Krum, in the order picked.

    Each step applies Krum (same ``f``, ``n_remaining - f - 2`` neighbours, clamped as in
    :func:`~diversefl.aggregators.krum.neighbour_count`) to the updates not yet picked, and
    moves the winner (ties -> lowest index) into the selection set. Picked clients are removed
    by setting their rows and columns of one copy of ``dist`` to +inf; no distance is recomputed.

    Parameters
    ----------
    dist : Tensor
        Pairwise squared Euclidean distances ``[n, n]``.
    f : int
        Assumed number of Byzantine clients.
    theta : int
        Size of the selection set, ``1 <= theta <= n``.

    Returns
    -------
    Tensor
        ``theta`` distinct client indices (int64).
    """
    n = dist.shape[0]
    masked = dist.clone()
    masked.fill_diagonal_(float("inf"))
    remaining = torch.ones(n, dtype=torch.bool, device=dist.device)
    picked = []
    for step in range(theta):
        scores = sum_of_nearest(masked, neighbour_count(n - step, f))
        scores = scores.masked_fill(~remaining, float("inf"))
        best = int(torch.argmin(scores))  # first minimum: ties -> lowest index
        picked.append(best)
        remaining[best] = False
        masked[best, :] = float("inf")
        masked[:, best] = float("inf")
    return torch.tensor(picked, dtype=torch.long, device=dist.device)


@dataclass
class Bulyan(Aggregator):
    """Bulyan (Guerraoui et al., 2018; paper supplementary A).

    1. Recursively apply Krum (same ``f``; ``n_remaining - f - 2`` neighbours on the shrinking
       remaining set) to pick a selection set of ``theta = n - 2f`` updates.
    2. Per coordinate, average the ``beta = theta - 2f`` values of the selection set closest to
       its coordinate median (:func:`~diversefl.aggregators.trimmed_mean.closest_to_median_mean`).

    Requires ``n >= 4f + 3`` (so ``beta = n - 4f >= 3``); the paper's setting n = 23, f = 5 is
    exactly at the bound. ``accepted`` marks the selection set; ``scores["bulyan_rank"]`` gives
    each client's selection order (0 = picked first, NaN = not selected).

    Notes
    -----
    The neighbour count does NOT stay >= 1 for every f: step ``t`` (0-based) runs Krum on
    ``n - t`` updates, so the last step (``t = theta - 1``) sees ``2f + 1`` updates and
    ``n_remaining - f - 2 = f - 1``, independent of n. It is >= 1 only for ``f >= 2``; for
    ``f = 0`` and ``f = 1`` the last steps are clamped to one neighbour (``f = 0`` with a single
    update left needs none). ``n >= 4f + 3`` guarantees the trimmed-mean stage keeps at least 3
    values, not Krum's own ``n_remaining > 2f + 2``, which fails for the last two steps.
    """

    name: ClassVar[str] = "bulyan"

    def check(self, n: int, f: int) -> None:
        super().check(n, f)
        if f < 0:
            raise AggregatorError(f"{self.name}: f must be >= 0, got f={f}")
        if n < 4 * f + 3:
            raise AggregatorError(
                f"{self.name}: needs n >= 4f + 3 clients, got n={n}, f={f} "
                f"(n must be at least {4 * f + 3})"
            )

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        n, f = updates.shape[0], ctx.f
        theta = n - 2 * f
        beta = theta - 2 * f
        if beta < 1:
            # unreachable after check() on the whole federation: dropping malformed rows keeps
            # beta >= 1 (it lowers f with n)
            raise AggregatorError(f"{self.name}: needs n >= 4f + 1 to aggregate, got n={n}, f={f}")
        picked = bulyan_select(pairwise_sq_dists(updates), f, theta)
        accepted = torch.zeros(n, dtype=torch.bool, device=updates.device)
        accepted[picked] = True
        rank = torch.full((n,), float("nan"), dtype=torch.float64, device=updates.device)
        rank[picked] = torch.arange(theta, dtype=torch.float64, device=updates.device)
        update = closest_to_median_mean(updates[picked], beta)
        return Aggregate(update=update, accepted=accepted, scores={"bulyan_rank": rank})
