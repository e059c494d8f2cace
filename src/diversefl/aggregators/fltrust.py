"""FLTrust (Cao, Fang, Liu & Gong, NDSS 2021): trust each update by its cosine with a gradient
the server computes on a small root dataset, and rescale every update to that gradient's norm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, AggregatorError, RoundContext


def root_indices(shared_samples: Tensor, size: int, seed: int) -> Tensor:
    """A fixed root dataset: ``min(size, available)`` distinct indices of ``shared_samples``.

    The candidates are the sorted distinct indices, and the subset is drawn with a generator
    seeded by ``seed`` only, so the same root data is used in every round.
    """
    pool = torch.unique(shared_samples.flatten().cpu())
    gen = torch.Generator().manual_seed(seed)
    k = min(size, pool.numel())
    return pool[torch.randperm(pool.numel(), generator=gen)[:k]]


def fltrust_combine(updates: Tensor, g0: Tensor) -> tuple[Tensor, Tensor]:
    """FLTrust's rule given the server gradient ``g0 [d]``: ``(aggregate [d], trust [n])``.

    ``TS_i = ReLU(cos(z_i, g0))``; ``z_i`` is rescaled to ``|g0|``; the aggregate is
    ``sum_i TS_i * z_i * |g0| / |z_i|  /  sum_i TS_i``, or zero when every ``TS_i`` is 0. A zero
    update or a zero ``g0`` has cosine 0, hence no trust.
    """
    tiny = torch.finfo(updates.dtype).tiny
    g0_norm = g0.norm()
    z_norm = updates.norm(dim=1)
    cos = (updates @ g0) / (z_norm * g0_norm).clamp_min(tiny)
    trust = torch.relu(cos)
    scale = trust * g0_norm / z_norm.clamp_min(tiny)  # TS_i * |g0| / |z_i|
    total = trust.sum()
    if float(total) == 0.0:
        return torch.zeros_like(g0), trust
    return (scale[:, None] * updates).sum(0) / total, trust


@dataclass
class FLTrust(Aggregator):
    """FLTrust: cosine trust scores against a root-data gradient, norms equalised to it.

    The server computes ``g0 = ctx.server_grad_fn(root_idx)`` on a fixed root dataset: a
    seeded subset of the union of the clients' one-time shared samples
    (``ctx.shared_samples``), of size ``min(root_size, available)``. Each update gets trust
    ``TS_i = ReLU(cos(z_i, g0))``, is rescaled to norm ``|g0|``, and the aggregate is the
    trust-weighted mean ``sum_i TS_i * z_i * |g0| / |z_i| / sum_i TS_i`` (zero when no update
    has positive trust). ``accepted`` is ``TS > 0``; scores ``{"trust": TS}``.

    References
    ----------
    X. Cao, M. Fang, J. Liu, N. Z. Gong. "FLTrust: Byzantine-robust Federated Learning via
    Trust Bootstrapping", NDSS 2021.
    """

    name: ClassVar[str] = "fltrust"
    root_size: int = 100  # root dataset: a seeded sample of the union of the shared samples
    root_seed: int = 0  # seed of the root-data draw (fixed across rounds)

    def __post_init__(self) -> None:
        if self.root_size < 1:
            raise AggregatorError(f"{self.name}: root_size must be >= 1, got {self.root_size}")

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        if ctx.server_grad_fn is None or ctx.shared_samples is None:
            raise AggregatorError(
                "fltrust: needs server-side data (ctx.server_grad_fn and ctx.shared_samples) "
                "to compute the root-dataset gradient"
            )
        root = root_indices(ctx.shared_samples, self.root_size, self.root_seed)
        if root.numel() == 0:
            raise AggregatorError("fltrust: the root dataset is empty (no shared samples)")
        g0 = ctx.server_grad_fn(root.to(ctx.shared_samples.device))
        g0 = g0.reshape(-1).to(device=updates.device, dtype=updates.dtype)
        if g0.numel() != updates.shape[1] or not bool(torch.isfinite(g0).all()):
            raise AggregatorError(
                f"fltrust: server gradient must be finite with {updates.shape[1]} entries, got "
                f"shape {tuple(g0.shape)}"
            )
        update, trust = fltrust_combine(updates, g0)
        return Aggregate(update=update, accepted=trust > 0, scores={"trust": trust})
