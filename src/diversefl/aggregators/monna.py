"""MoNNA (Farhadkhani, Guerraoui, Gupta, Hoang, Pinot & Stephan, 2023): average the n - f
updates nearest to a trusted reference gradient."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, AggregatorError, RoundContext
from diversefl.aggregators.fltrust import root_indices
from diversefl.aggregators.gram import CHUNK
from diversefl.aggregators.mean import mean_of


def nearest_to(updates: Tensor, pivot: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Mask ``[n]`` of the ``k`` rows nearest to ``pivot [d]`` (Euclidean; ties: the lowest
    index) and every row's float64 distance to it ``[n]``."""
    sq = torch.zeros(updates.shape[0], dtype=torch.float64, device=updates.device)
    for start in range(0, updates.shape[1], CHUNK):  # float64 copies one column block at a time
        block = updates[:, start : start + CHUNK].double()
        sq += (block - pivot[start : start + CHUNK].double()[None, :]).square().sum(1)
    dist = sq.sqrt()
    chosen = torch.sort(dist, stable=True).indices[:k]
    mask = torch.zeros(updates.shape[0], dtype=torch.bool, device=updates.device)
    mask[chosen] = True
    return mask, dist


def server_reference(ctx: RoundContext, size: int, seed: int, d: int, like: Tensor) -> Tensor:
    """The server's gradient ``[d]`` on a fixed root sample of the shared samples (FLTrust's
    root data), checked to be finite and of length ``d``."""
    if ctx.server_grad_fn is None or ctx.shared_samples is None:
        raise AggregatorError(
            "monna: needs server-side data (ctx.server_grad_fn and ctx.shared_samples) for its "
            "trusted reference gradient"
        )
    root = root_indices(ctx.shared_samples, size, seed)
    if root.numel() == 0:
        raise AggregatorError("monna: the root dataset is empty (no shared samples)")
    g0 = ctx.server_grad_fn(root.to(ctx.shared_samples.device))
    g0 = g0.reshape(-1).to(device=like.device, dtype=like.dtype)
    if g0.numel() != d or not bool(torch.isfinite(g0).all()):
        raise AggregatorError(
            f"monna: server gradient must be finite with {d} entries, got shape {tuple(g0.shape)}"
        )
    return g0


@dataclass
class MoNNA(Aggregator):
    """MoNNA: the mean of the ``n - f`` updates nearest (Euclidean) to a trusted reference.

    In the paper (and ByzFL) the reference is the gradient of one designated honest worker.
    This simulator has no client it may trust, so the reference is the server's own gradient
    on a fixed root sample of the clients' one-time shared samples (``ctx.server_grad_fn``;
    the same root data as ``fltrust``: ``root_size`` indices drawn with ``root_seed``), which
    plays the honest worker's part. Ties at the cut go to the lowest client index. Needs
    ``n - f >= 1``. ``accepted`` marks the ``n - f`` neighbours; scores ``{"distance": each
    update's distance to the reference}``.

    References
    ----------
    S. Farhadkhani, R. Guerraoui, N. Gupta, L.-N. Hoang, R. Pinot, J. Stephan. "Robust
    Collaborative Learning with Linear Gradient Overhead", ICML 2023 (MoNNA).
    """

    name: ClassVar[str] = "monna"
    root_size: int = 100  # reference gradient's root data: a seeded sample of the shared samples
    root_seed: int = 0  # seed of the root-data draw (fixed across rounds)

    def __post_init__(self) -> None:
        if self.root_size < 1:
            raise AggregatorError(f"{self.name}: root_size must be >= 1, got {self.root_size}")

    def check(self, n: int, f: int) -> None:
        super().check(n, f)
        if f < 0 or n - f < 1:
            raise AggregatorError(
                f"{self.name}: averages n - f nearest updates; needs f >= 0 and n - f >= 1, "
                f"got n={n}, f={f}"
            )

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        n, d = updates.shape
        pivot = server_reference(ctx, self.root_size, self.root_seed, d, updates)
        accepted, dist = nearest_to(updates, pivot, n - ctx.f)
        return Aggregate(
            update=mean_of(updates, accepted), accepted=accepted, scores={"distance": dist}
        )
