"""FLAME (Nguyen et al., USENIX Security 2022): keep the majority cluster of the updates by
cosine distance (HDBSCAN), clip them to the median norm, average, and add Gaussian noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, AggregatorError, RoundContext
from diversefl.aggregators.gram import float64_gram
from diversefl.aggregators.signguard import clipped_mean


def cosine_similarities(updates: Tensor) -> Tensor:
    """Pairwise cosine similarities ``[n, n]`` (float64, from one Gram pass), clamped to
    ``[-1, 1]``; a zero row has similarity 0 with every row, itself included."""
    gram = float64_gram(updates)
    norms = gram.diagonal().clamp_min(0.0).sqrt()
    inv = torch.where(norms > 0, 1.0 / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)
    return (gram * inv[:, None] * inv[None, :]).clamp(-1.0, 1.0)


def median_value(values: Tensor) -> Tensor:
    """The median of the 1-D ``values`` (an even count: the mean of the two middle values);
    ``values`` itself is left as it is."""
    ordered = values.sort().values
    n = ordered.numel()
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def reachable(adj: Tensor) -> Tensor:
    """Transitive closure of the symmetric bool adjacency ``adj [n, n]`` (diagonal included):
    ``out[i, j]`` when a path joins ``i`` and ``j``. Repeated squaring, at most log2(n) steps."""
    reach = adj | torch.eye(adj.shape[0], dtype=torch.bool, device=adj.device)
    while True:
        wider = (reach.double() @ reach.double()) > 0
        if torch.equal(wider, reach):
            return reach
        reach = wider


def majority_cluster(dist: Tensor, min_size: int) -> Tensor:
    """Members ``[n]`` of HDBSCAN's single cluster for ``min_samples = 1``, ``min_cluster_size
    = min_size > n / 2`` and ``allow_single_cluster`` on the distances ``dist [n, n]``.

    With ``min_samples = 1`` the mutual-reachability distance is the distance itself, so the
    hierarchy is single linkage. A cluster needs more than half the points, so the condensed
    tree is the root alone and its members are the points still in it at its largest lambda:
    the connected component of at least ``min_size`` points of the graph ``dist <= t*``, ``t*``
    the smallest distance at which such a component exists (found by bisection over the sorted
    pairwise distances; components by :func:`reachable`)."""
    n = dist.shape[0]
    if n == 1 or min_size <= 1:
        return torch.ones(n, dtype=torch.bool, device=dist.device)
    rows, cols = torch.triu_indices(n, n, offset=1, device=dist.device)
    levels = torch.unique(dist[rows, cols])  # sorted; at the largest the graph is complete
    lo, hi = 0, levels.numel() - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if int(reachable(dist <= levels[mid]).sum(1).max()) >= min_size:
            hi = mid
        else:
            lo = mid + 1
    reach = reachable(dist <= levels[lo])
    return reach[int(torch.argmax(reach.sum(1)))]


@dataclass
class FLAME(Aggregator):
    """FLAME: HDBSCAN on cosine distances, median-norm clipping, Gaussian noise.

    1. Clustering: cosine distances ``1 - cos(z_i, z_j)`` (a zero update is at distance 1 from
       all), clustered as HDBSCAN with ``min_cluster_size = floor(n/2) + 1``, ``min_samples =
       1`` and a single cluster allowed (the settings FLAME's re-implementations pass to the
       ``hdbscan`` package). Those settings make the result exact and small:
       :func:`majority_cluster`, the single-linkage component that first reaches the minimum
       size (identical to scikit-learn's ``HDBSCAN`` on these settings, checked in the tests).
       The cluster's members are kept; the others are outliers.
    2. Clipping: ``S`` is the median L2 norm of ALL updates (even ``n``: the mean of the two
       middle norms); each kept update is scaled by ``min(1, S / |z_i|)``.
    3. The update is the mean of the clipped kept updates plus ``N(0, sigma^2 I)`` noise with
       ``sigma = noise * S``, drawn from ``ctx.generator`` (``noise = 0``: no noise).

    FLAME works on local models: distances between them, norms of their differences to the
    global model, noise on the aggregated model. The clients here send FedSGD gradients, which
    play the part of those differences, so every step applies to the updates directly (the
    noise reaches the model scaled by the learning rate). Defaults from the paper:
    ``noise = 0.001`` (lambda for image classification; the paper uses 0.01 for NLP). Any
    ``n``, ``f`` runs (the rule does not use ``f``; at least ``floor(n/2) + 1`` clients are
    always kept). ``accepted`` marks the cluster; scores ``{"norm_ratio": |z_i| / S}``.

    References
    ----------
    T. D. Nguyen, P. Rieger, H. Chen, H. Yalame, H. Moellering, H. Fereidooni, S. Marchal,
    M. Miettinen, A. Mirhoseini, S. Zeitouni, F. Koushanfar, A.-R. Sadeghi, T. Schneider.
    "FLAME: Taming Backdoors in Federated Learning", USENIX Security 2022 (Algorithm 1).
    """

    name: ClassVar[str] = "flame"
    noise: float = 0.001  # lambda: noise std = lambda * median norm (paper: 0.001 images)

    def __post_init__(self) -> None:
        if not self.noise >= 0:
            raise AggregatorError(f"{self.name}: noise must be >= 0, got {self.noise}")

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        n, d = updates.shape
        dist = (1.0 - cosine_similarities(updates)).fill_diagonal_(0.0)
        kept = majority_cluster(dist, n // 2 + 1)
        norms = torch.linalg.vector_norm(updates.double(), dim=1)
        bound = median_value(norms)
        update = clipped_mean(updates, norms, kept, bound)
        if self.noise > 0:
            gen = ctx.generator
            draw = torch.randn(d, generator=gen, dtype=update.dtype, device=gen.device)
            update = update + (self.noise * float(bound)) * draw.to(update.device)
        ratio = norms / bound if float(bound) > 0 else torch.ones_like(norms)
        return Aggregate(update=update, accepted=kept, scores={"norm_ratio": ratio})
