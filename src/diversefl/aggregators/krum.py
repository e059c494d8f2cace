"""Krum and Multi-Krum (Blanchard et al., 2017): keep the update(s) closest to their neighbours.

Distance convention (shared with :mod:`diversefl.aggregators.bulyan`): the pairwise squared
Euclidean distances are computed ONCE per round by :func:`pairwise_sq_dists`, in float64. The
bulk comes from one float64 Gram product ``|a|^2 + |b|^2 - 2 a.b`` (a matrix multiply, fast),
and every pair where that form could cancel badly -- a distance below ``1e-6`` of
``|a|^2 + |b|^2``, e.g. two nearly identical large updates of a scaled attack -- is recomputed
from exact coordinate differences. Scores are returned in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators import gram as gram_module
from diversefl.aggregators.base import Aggregate, Aggregator, AggregatorError, RoundContext
from diversefl.aggregators.gram import float64_gram
from diversefl.aggregators.mean import mean_of

# Pairs whose Gram-form distance is below this share of |a|^2 + |b|^2 are recomputed exactly
# (float64 keeps ~16 digits, so the Gram form is accurate to ~1e-10 relative above it).
_RECHECK = 1e-6


def _exact_pairs(updates: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``||z_i - z_j||^2`` in float64 from coordinate differences, for the listed pairs."""
    out = torch.zeros(rows.numel(), dtype=torch.float64, device=updates.device)
    step = gram_module.CHUNK
    for start in range(0, updates.shape[1], step):
        chunk = updates[:, start : start + step].to(torch.float64)
        out += (chunk[rows] - chunk[cols]).square().sum(1)
    return out


def pairwise_sq_dists(updates: Tensor) -> Tensor:
    """Squared Euclidean distances between all rows, ``dist[i, j] = ||z_i - z_j||_2^2``.

    Parameters
    ----------
    updates : Tensor
        Client updates ``[n, d]`` (any float dtype; must be finite).

    Returns
    -------
    Tensor
        Symmetric float64 matrix ``[n, n]`` with an exactly zero diagonal: a float64 Gram
        product, with the pairs at risk of cancellation recomputed from exact differences.
    """
    n = updates.shape[0]
    dist = torch.zeros(n, n, dtype=torch.float64, device=updates.device)
    if n < 2:
        return dist
    gram = float64_gram(updates)
    sq = gram.diagonal().clone()
    rows, cols = torch.triu_indices(n, n, offset=1, device=updates.device)
    total = sq[rows] + sq[cols]
    upper = (total - 2 * gram[rows, cols]).clamp_min(0.0)
    risky = upper <= _RECHECK * total
    if bool(risky.any()):
        upper[risky] = _exact_pairs(updates, rows[risky], cols[risky])
    dist[rows, cols] = upper
    dist[cols, rows] = upper
    return dist


def neighbour_count(n: int, f: int) -> int:
    """Krum's number of neighbours ``n - f - 2``, clamped to ``[1, n - 1]`` (0 when n = 1).

    The clamp only matters outside Krum's requirement ``n > 2f + 2`` (under it,
    ``n - f - 2 > f >= 0``): after the base class drops malformed rows, or in Bulyan's last
    recursive selections when ``f <= 2``. One neighbour keeps the score meaningful (distance to
    the nearest other update) where zero neighbours would make every score 0.
    """
    return min(max(n - f - 2, 1), n - 1)


def sum_of_nearest(masked: Tensor, k: int) -> Tensor:
    """Row sums of the ``k`` smallest entries; ``masked`` has +inf wherever a pair is excluded."""
    if k <= 0:
        return torch.zeros(masked.shape[0], dtype=masked.dtype, device=masked.device)
    return masked.topk(k, dim=1, largest=False).values.sum(1)


def krum_scores(dist: Tensor, f: int) -> Tensor:
    """Krum score of every client (paper, supplementary A, eq. 15).

    ``score(i)`` is the sum of the squared distances from ``z_i`` to its ``n - f - 2`` nearest
    OTHER updates (see :func:`neighbour_count` for the clamp outside ``n > 2f + 2``).

    Parameters
    ----------
    dist : Tensor
        Pairwise SQUARED Euclidean distances ``[n, n]`` (e.g. from :func:`pairwise_sq_dists`);
        they are summed as given, not squared again.
    f : int
        Assumed number of Byzantine clients.

    Returns
    -------
    Tensor
        Scores ``[n]``, same dtype as ``dist``; lower means more central.
    """
    n = dist.shape[0]
    masked = dist.clone()
    masked.fill_diagonal_(float("inf"))
    return sum_of_nearest(masked, neighbour_count(n, f))


def _check_krum(name: str, n: int, f: int) -> None:
    if f < 0:
        raise AggregatorError(f"{name}: f must be >= 0, got f={f}")
    if n <= 2 * f + 2:
        raise AggregatorError(
            f"{name}: needs n > 2f + 2 clients, got n={n}, f={f} (n must be at least {2 * f + 3})"
        )


@dataclass
class Krum(Aggregator):
    """Krum (Blanchard et al., 2017; paper supplementary A, eqs. 15-16).

    Step with the single update whose summed squared distance to its ``n - f - 2`` nearest
    other updates is smallest; ties go to the lowest client index. Requires ``n > 2f + 2``.
    """

    name: ClassVar[str] = "krum"

    def check(self, n: int, f: int) -> None:
        super().check(n, f)
        _check_krum(self.name, n, f)

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        scores = krum_scores(pairwise_sq_dists(updates), ctx.f)
        best = int(torch.argmin(scores))  # first minimum: ties -> lowest index
        accepted = torch.zeros(updates.shape[0], dtype=torch.bool, device=updates.device)
        accepted[best] = True
        return Aggregate(update=updates[best].clone(), accepted=accepted, scores={"krum": scores})


@dataclass
class MultiKrum(Aggregator):
    """Multi-Krum (Blanchard et al., 2017): average the ``m`` updates with the lowest Krum scores.

    Scores as in :class:`Krum`; ties at the cut go to the lowest client index. With ``m = 1``
    this is Krum. If malformed rows were dropped so that fewer than ``m`` remain, all remaining
    rows are averaged.
    """

    name: ClassVar[str] = "multi_krum"

    m: int | None = None  # how many lowest-score updates to average; None = n - f

    def check(self, n: int, f: int) -> None:
        super().check(n, f)
        _check_krum(self.name, n, f)
        if self.m is not None and not 1 <= self.m <= n:
            raise AggregatorError(f"{self.name}: needs 1 <= m <= n, got m={self.m}, n={n}")

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        n = updates.shape[0]
        scores = krum_scores(pairwise_sq_dists(updates), ctx.f)
        m = n - ctx.f if self.m is None else self.m
        m = min(max(m, 1), n)
        # stable sort: equal scores keep index order, so ties at the cut go to the lowest index
        chosen = torch.sort(scores, stable=True).indices[:m]
        accepted = torch.zeros(n, dtype=torch.bool, device=updates.device)
        accepted[chosen] = True
        return Aggregate(
            update=mean_of(updates, accepted), accepted=accepted, scores={"multi_krum": scores}
        )
