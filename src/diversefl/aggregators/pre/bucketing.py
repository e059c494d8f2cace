"""Bucketing (Karimireddy, He & Jaggi, ICLR 2022, "Byzantine-Robust Learning on Heterogeneous
Datasets via Bucketing")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.pre.base import PreAggregator
from diversefl.round import RoundContext


def bucket_means(updates: Tensor, s: int, perm: Tensor) -> tuple[Tensor, Tensor]:
    """The rows in the order ``perm`` cut into consecutive buckets of ``s`` (the last one
    smaller): each bucket's mean ``[ceil(k/s), d]`` and membership ``[ceil(k/s), k]``."""
    k = updates.shape[0]
    m = math.ceil(k / s)
    bucket_of = torch.empty(k, dtype=torch.long, device=updates.device)
    bucket_of[perm.to(updates.device)] = torch.arange(k, device=updates.device) // s
    members = bucket_of[None, :] == torch.arange(m, device=updates.device)[:, None]
    sums = torch.zeros(m, updates.shape[1], dtype=updates.dtype, device=updates.device)
    sums.index_add_(0, bucket_of, updates)
    return sums / members.sum(1, keepdim=True).to(updates.dtype), members


@dataclass
class Bucketing(PreAggregator):
    """The clients shuffled (seeded by the round) into buckets of ``s``; the rule then sees one
    mean per bucket. Rules that read one client's own data (DiverseFL's guides, the oracle)
    cannot follow it."""

    name: ClassVar[str] = "bucketing"
    keeps_rows: ClassVar[bool] = False
    s: int = 2  # clients per bucket (the paper: 2)

    def __post_init__(self) -> None:
        if isinstance(self.s, bool) or not isinstance(self.s, int) or self.s < 1:
            raise ValueError(f"bucketing: s must be an integer >= 1, got {self.s!r}")

    def out_rows(self, n: int) -> int:
        return math.ceil(n / self.s)

    def __call__(self, updates: Tensor, ctx: RoundContext) -> tuple[Tensor, Tensor]:
        perm = torch.randperm(updates.shape[0], generator=ctx.generator)
        return bucket_means(updates, self.s, perm)
