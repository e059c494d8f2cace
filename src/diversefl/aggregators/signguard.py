"""SignGuard (Xu, Huang, Song & Lan, ICDCS 2022): keep the updates that pass a norm filter and
fall in the largest cluster of sign statistics; average them clipped to the median norm."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, AggregatorError, RoundContext
from diversefl.aggregators.median import coordinate_median

_SHIFT_ITERS = 100  # mean-shift iterations at most (3-D features converge in a few)
# Distances from coordinate differences (not the Gram form): the same bits in any row order.
_EXACT = "donot_use_mm_for_euclid_dist"


def norm_filter(norms: Tensor, lower: float, upper: float) -> tuple[Tensor, Tensor]:
    """Mask of rows with ``lower <= |z_i| / M <= upper`` (M the median norm, the mean of the two
    middle norms for an even count; tested as ``lower M <= |z_i| <= upper M``) and ``M``."""
    median = coordinate_median(norms[:, None])[0]
    return (norms >= lower * median) & (norms <= upper * median), median


def sign_features(updates: Tensor, coords: Tensor) -> Tensor:
    """Per row, the fractions of positive, zero and negative entries among ``coords``:
    float64 ``[n, 3]``."""
    sub = updates[:, coords.to(updates.device)]
    count = max(1, sub.shape[1])
    parts = [(sub > 0).sum(1), (sub == 0).sum(1), (sub < 0).sum(1)]
    return torch.stack(parts, 1).double() / count


def mean_shift_modes(points: Tensor, bandwidth: float) -> Tensor:
    """Flat-kernel mean shift started from every point: each start moves to the mean of the
    points within ``bandwidth`` of it until no start moves. Returns the modes ``[n, k]``."""
    modes = points.clone()
    for _ in range(_SHIFT_ITERS):
        near = (torch.cdist(modes, points, compute_mode=_EXACT) <= bandwidth).double()
        moved = (near @ points) / near.sum(1, keepdim=True).clamp_min(1.0)
        moved = torch.where(near.sum(1, keepdim=True) > 0, moved, modes)
        if torch.equal(moved, modes):
            break
        modes = moved
    return modes


def largest_cluster(points: Tensor) -> Tensor:
    """Mask ``[n]`` of the largest mean-shift cluster of ``points [n, k]``.

    The bandwidth is twice the median over points of the distance to the ``ceil(n / 2)``-th
    nearest other point: wide enough that a majority's one blob of features is one mode (with
    once that distance, Gaussian noise split 23 honest clients into clusters of 15-20), narrow
    enough that a sign-flipped minority is its own cluster. Points whose modes
    lie within half a bandwidth of each other form one cluster; the cluster of the most members
    wins, a tie going to the mode nearest the points' coordinate-wise median."""
    n = points.shape[0]
    if n <= 2:
        return torch.ones(n, dtype=torch.bool, device=points.device)
    dist = torch.cdist(points, points, compute_mode=_EXACT)
    kth = dist.sort(1).values[:, (n + 1) // 2]  # column 0 is the point itself
    bandwidth = 2.0 * float(coordinate_median(kth[:, None])[0])
    modes = mean_shift_modes(points, bandwidth)
    same = torch.cdist(modes, modes, compute_mode=_EXACT) <= bandwidth / 2
    size = same.sum(1).double()
    centre = coordinate_median(points)
    offset = (modes - centre).norm(dim=1)
    best = int(torch.argmax(size - offset / (offset.max() + 1.0)))  # size first, then nearness
    return same[best]


def clipped_mean(updates: Tensor, norms: Tensor, kept: Tensor, bound: Tensor) -> Tensor:
    """Mean of the kept rows, each scaled by ``min(1, bound / |z_i|)``; zeros if none kept."""
    if not bool(kept.any()):
        return torch.zeros(updates.shape[1], dtype=updates.dtype, device=updates.device)
    scale = torch.where(norms > bound, bound / norms.clamp_min(torch.finfo(norms.dtype).tiny), 1.0)
    rows = updates[kept] * scale[kept, None].to(updates.dtype)
    return rows.sum(0) / int(kept.sum())


@dataclass
class SignGuard(Aggregator):
    """SignGuard: norm filtering intersected with sign-statistics clustering, then a clipped
    mean.

    1. Norm filter: keep ``i`` when ``lower <= |z_i| / M <= upper``, ``M`` the median norm.
    2. Sign clustering: on ``ceil(coords * d)`` coordinates drawn from ``ctx.generator`` (the
       same for every client), each update's fractions of positive, zero and negative entries
       are clustered by flat-kernel mean shift (:func:`largest_cluster`; the paper uses
       MeanShift) and the largest cluster is kept.
    3. The update is the mean over clients kept by both steps of ``z_i * min(1, M / |z_i|)``
       (zero if none is).

    Defaults as in the paper: ``lower = 0.1``, ``upper = 3.0``, 10% of the coordinates. Any
    ``n``, ``f`` runs (the rule does not use ``f``). ``accepted`` marks the kept clients;
    scores ``{"norm_ratio": |z_i| / M, "positive": the fraction of positive entries}``.

    References
    ----------
    J. Xu, S.-L. Huang, L. Song, T. Lan. "Byzantine-robust Federated Learning through
    Collaborative Malicious Gradient Filtering", ICDCS 2022 (SignGuard, Algorithm 1).
    """

    name: ClassVar[str] = "signguard"
    lower: float = 0.1  # norm filter: smallest accepted |z_i| / median norm
    upper: float = 3.0  # norm filter: largest accepted |z_i| / median norm
    coords: float = 0.1  # fraction of coordinates whose signs are counted (at least one)

    def __post_init__(self) -> None:
        if not 0 <= self.lower <= 1 <= self.upper:
            raise AggregatorError(
                f"{self.name}: needs 0 <= lower <= 1 <= upper, got lower={self.lower}, "
                f"upper={self.upper}"
            )
        if not 0 < self.coords <= 1:
            raise AggregatorError(f"{self.name}: coords must be in (0, 1], got {self.coords}")

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        n, d = updates.shape
        norms = torch.linalg.vector_norm(updates.double(), dim=1)
        by_norm, median = norm_filter(norms, self.lower, self.upper)
        k = min(d, max(1, math.ceil(self.coords * d - 1e-9)))
        coords = torch.randperm(d, generator=ctx.generator, device=ctx.generator.device)[:k]
        features = sign_features(updates, coords)
        kept = by_norm & largest_cluster(features)
        ratio = norms / median if float(median) > 0 else torch.ones_like(norms)
        return Aggregate(
            update=clipped_mean(updates, norms, kept, median),
            accepted=kept,
            scores={"norm_ratio": ratio, "positive": features[:, 0]},
        )
