"""SMEA, smallest maximum eigenvalue averaging (Allouah et al., ICML 2023, as ByzFL defines it):
average the n - f updates whose empirical covariance has the smallest top eigenvalue."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, RoundContext
from diversefl.aggregators.gram import CHUNK
from diversefl.aggregators.mean import mean_of
from diversefl.aggregators.subset_search import SubsetSearch

# Subset-by-pair entries gathered at once (bounds the [subsets, m, m] block to ~32 MB float64).
_BLOCK_ENTRIES = 1 << 22


def centred_gram(updates: Tensor) -> Tensor:
    """The float64 Gram matrix ``[n, n]`` of the rows centred on their mean, summed over column
    chunks (and symmetrised). Every centred quantity of a subset or a weighting of the rows
    follows from it; centring first keeps a large common offset from cancelling badly."""
    n, d = updates.shape
    gram = torch.zeros(n, n, dtype=torch.float64, device=updates.device)
    for start in range(0, d, CHUNK):
        chunk = updates[:, start : start + CHUNK].to(torch.float64)
        chunk = chunk - chunk.mean(0, keepdim=True)
        gram += chunk @ chunk.T
    return (gram + gram.T) / 2


def subset_top_eigenvalues(gram: Tensor, subsets: Tensor) -> Tensor:
    """For each row ``S`` of ``subsets [s, m]`` (client indices), the largest eigenvalue of the
    empirical covariance ``(1/m) sum_{i in S} (x_i - mu_S)(x_i - mu_S)^T`` ``[s]``.

    The covariance's nonzero eigenvalues are those of the subset's doubly centred Gram block
    divided by ``m``, so each subset costs one ``m x m`` eigenproblem, whatever ``d`` is."""
    m = subsets.shape[1]
    block = gram[subsets[:, :, None], subsets[:, None, :]]  # a fresh tensor: centred in place
    row = block.mean(2)  # the block is symmetric: its column means are the same
    block.sub_(row[:, :, None]).sub_(row[:, None, :]).add_(row.mean(1)[:, None, None])
    return torch.linalg.eigvalsh(block)[:, -1] / m


def smallest_eigenvalue_subset(gram: Tensor, m: int) -> tuple[Tensor, float]:
    """The size-``m`` subset (sorted client indices ``[m]``) whose covariance has the smallest
    top eigenvalue, and that eigenvalue. Every subset is scored, in lexicographic order and in
    blocks; ties go to the first subset in that order."""
    n = gram.shape[0]
    block = max(1, _BLOCK_ENTRIES // max(1, m * m))
    combos = itertools.chain.from_iterable(itertools.combinations(range(n), m))
    best, best_value = None, math.inf
    while (flat := np.fromiter(itertools.islice(combos, block * m), dtype=np.int64)).size:
        subsets = torch.from_numpy(flat.reshape(-1, m)).to(gram.device)
        values = subset_top_eigenvalues(gram, subsets)
        k = int(torch.argmin(values))  # first minimum
        if best is None or float(values[k]) < best_value:
            best, best_value = subsets[k], float(values[k])
    assert best is not None  # m >= 1 so there is at least one subset
    return best, best_value


@dataclass
class SMEA(SubsetSearch):
    """SMEA: the mean of the ``n - f`` updates whose empirical covariance has the smallest
    largest eigenvalue.

    As ByzFL defines it: over every subset ``S`` of ``n - f`` clients, ``Sigma_S = (1/|S|)
    sum_{i in S} (z_i - mu_S)(z_i - mu_S)^T``; the rule returns ``mu_S`` of the subset of
    smallest ``lambda_max(Sigma_S)``. ByzFL estimates ``lambda_max`` with one power-method step
    from a random start; here it is exact (each subset's ``m x m`` centred Gram block, float64),
    so the choice is deterministic. Ties go to the subset of lowest client indices.

    The search is exact over all ``C(n, f)`` subsets, so the rule refuses a federation with
    more than ``max_subsets`` of them (default 200,000: n = 23 allows f <= 6, n = 50 allows
    f <= 3; one core scores about 40,000 subsets of 17 clients a second). Needs ``n > 2f``
    (ByzFL's condition). ``accepted`` marks the chosen ``n - f`` clients; scores
    ``{"eigenvalue": the chosen subset's lambda_max, for its members; NaN elsewhere}``.

    References
    ----------
    Y. Allouah, R. Guerraoui, N. Gupta, R. Pinot, J. Stephan. "On the Privacy-Robustness-Utility
    Trilemma in Distributed Learning", ICML 2023 (SMEA); ByzFL's ``byzfl.SMEA``.
    """

    name: ClassVar[str] = "smea"
    max_subsets: int = 200_000  # refuse n, f with more than this many subsets C(n, f)

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        n = updates.shape[0]
        chosen, value = smallest_eigenvalue_subset(centred_gram(updates), n - ctx.f)
        accepted = torch.zeros(n, dtype=torch.bool, device=updates.device)
        accepted[chosen] = True
        eigenvalue = torch.full((n,), float("nan"), dtype=torch.float64, device=updates.device)
        eigenvalue[chosen] = value
        return Aggregate(
            update=mean_of(updates, accepted), accepted=accepted, scores={"eigenvalue": eigenvalue}
        )
