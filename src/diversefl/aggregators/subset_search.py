"""What the exact subset-search rules (MDA, SMEA) share: the bound on the number of subsets
C(n, f) they enumerate, and their n > 2f requirement, checked up front."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from diversefl.aggregators.base import Aggregator, AggregatorError


@dataclass
class SubsetSearch(Aggregator):
    """Base of rules that search every subset of n - f clients; refuses n <= 2f and
    ``C(n, f) > max_subsets`` (the exact search would be too slow)."""

    name: ClassVar[str] = "subset_search"
    max_subsets: int = 1_000_000  # refuse n, f with more than this many subsets C(n, f)

    def __post_init__(self) -> None:
        if self.max_subsets < 1:
            raise AggregatorError(f"{self.name}: max_subsets must be >= 1, got {self.max_subsets}")

    def check(self, n: int, f: int) -> None:
        super().check(n, f)
        if f < 0:
            raise AggregatorError(f"{self.name}: f must be >= 0, got f={f}")
        if n <= 2 * f:
            raise AggregatorError(
                f"{self.name}: needs n > 2f clients, got n={n}, f={f} (n must be at least "
                f"{2 * f + 1})"
            )
        count = math.comb(n, f)
        if count > self.max_subsets:
            raise AggregatorError(
                f"{self.name}: C(n={n}, f={f}) = {count} subsets exceeds max_subsets="
                f"{self.max_subsets} (the exact search would be too slow)"
            )
