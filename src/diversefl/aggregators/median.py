"""Coordinate-wise median (Yin et al., 2018), with the mean of the two middle values for an
even number of clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, RoundContext
from diversefl.aggregators.order_stats import sorted_rows


def median_of_sorted(sorted_updates: Tensor) -> Tensor:
    """Per-coordinate median ``[d]`` of updates ``[n, d]`` already sorted along dim 0.

    For odd ``n`` this is the middle row; for even ``n`` it is the mean of the two middle rows
    (``torch.median`` would return the lower one, which biases the result downward).
    """
    n = sorted_updates.shape[0]
    if n == 0:
        raise ValueError("median of zero rows is undefined")
    mid = n // 2
    if n % 2 == 1:
        return sorted_updates[mid].clone()
    # halves first: the same bits as (a + b) / 2 (halving is exact), without its overflow to
    # inf for two values near the dtype's largest (float16's 65,504)
    return sorted_updates[mid - 1] / 2 + sorted_updates[mid] / 2


def coordinate_median(updates: Tensor) -> Tensor:
    """Coordinate-wise median ``[d]`` of ``updates [n, d]`` (even ``n``: mean of the two middle
    values of each coordinate). Only the middle one or two sorted rows are formed."""
    n = updates.shape[0]
    if n == 0:
        raise ValueError("median of zero rows is undefined")
    lo = (n - 1) // 2  # the middle row (odd n) or the lower of the two middle rows (even n)
    middle = sorted_rows(updates, lo, n // 2 + 1)
    return median_of_sorted(middle) if n % 2 == 0 else middle[0]


@dataclass
class Median(Aggregator):
    """Coordinate-wise median of the received updates (Yin et al., 2018).

    The u-th coordinate of the aggregate is the one-dimensional median of
    ``{z_1(u), ..., z_n(u)}`` (supplementary A of the DiverseFL paper, "Median"). For an even
    number of clients the median is the mean of the two middle values of each coordinate.

    Every client contributes to the order statistic, so ``accepted`` is all True: the rule
    never excludes a client as a whole (only rows dropped as non-finite or malformed before
    aggregation are reported as not accepted).
    """

    name: ClassVar[str] = "median"

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        accepted = torch.ones(updates.shape[0], dtype=torch.bool, device=updates.device)
        return Aggregate(update=coordinate_median(updates), accepted=accepted)
