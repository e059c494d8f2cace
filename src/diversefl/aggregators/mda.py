"""Minimum-diameter averaging (El Mhamdi, Guerraoui & Rouault, 2018): average the n - f updates
whose set has the smallest diameter, found by an exact search over all subsets."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, RoundContext
from diversefl.aggregators.krum import pairwise_sq_dists
from diversefl.aggregators.mean import mean_of
from diversefl.aggregators.subset_search import SubsetSearch

# Subset-by-pair entries gathered at once (bounds the [subsets, m, m] block to ~32 MB float64).
_BLOCK_ENTRIES = 1 << 22


def subset_diameters(dist: Tensor, subsets: Tensor) -> Tensor:
    """Squared diameter of each subset: ``max_{i, j in S} dist[i, j]`` for the rows of
    ``subsets [s, m]`` (client indices), from the squared distances ``dist [n, n]``."""
    return dist[subsets[:, :, None], subsets[:, None, :]].amax(dim=(1, 2))


def min_diameter_subset(dist: Tensor, m: int) -> Tensor:
    """The size-``m`` subset (sorted client indices ``[m]``) of smallest diameter.

    Every subset is scored, in lexicographic order and in blocks of subsets; ties go to the
    first subset in that order (the one of lowest indices)."""
    n = dist.shape[0]
    block = max(1, _BLOCK_ENTRIES // max(1, m * m))
    combos = itertools.combinations(range(n), m)
    best, best_diam = None, math.inf
    while chunk := list(itertools.islice(combos, block)):
        subsets = torch.tensor(chunk, dtype=torch.long, device=dist.device).reshape(-1, m)
        diam = subset_diameters(dist, subsets)
        k = int(torch.argmin(diam))  # first minimum
        if float(diam[k]) < best_diam:
            best, best_diam = subsets[k], float(diam[k])
    assert best is not None  # m >= 1 so there is at least one subset
    return best


@dataclass
class MDA(SubsetSearch):
    """Minimum-diameter averaging: the mean of the ``n - f`` updates whose diameter (largest
    pairwise Euclidean distance) is smallest.

    The search is exact: all ``C(n, f)`` subsets of ``n - f`` clients are scored from the
    pairwise squared distances (float64, Krum's :func:`pairwise_sq_dists`), so the rule refuses
    a federation with more than ``max_subsets`` subsets (default 10^6: e.g. n = 23 allows any
    f <= 11, n = 50 allows f <= 4). Ties go to the subset of lowest client indices. Needs
    ``n > 2f`` (the paper's resilience condition). ``accepted`` marks the chosen ``n - f``;
    scores ``{"diameter": the chosen subset's diameter, for its members; NaN elsewhere}``.

    References
    ----------
    E. M. El Mhamdi, R. Guerraoui, S. Rouault. "The Hidden Vulnerability of Distributed
    Learning in Byzantium", ICML 2018 (minimum-diameter averaging, MDA); S. Rousseau's
    implementation in the Garfield / AggregaThor line of work.
    """

    name: ClassVar[str] = "mda"
    max_subsets: int = 1_000_000  # refuse n, f with more than this many subsets C(n, f)

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        n = updates.shape[0]
        dist = pairwise_sq_dists(updates)
        chosen = min_diameter_subset(dist, n - ctx.f)
        accepted = torch.zeros(n, dtype=torch.bool, device=updates.device)
        accepted[chosen] = True
        diameter = torch.full((n,), float("nan"), dtype=torch.float64, device=updates.device)
        diameter[chosen] = subset_diameters(dist, chosen[None]).sqrt()
        return Aggregate(
            update=mean_of(updates, accepted), accepted=accepted, scores={"diameter": diameter}
        )
