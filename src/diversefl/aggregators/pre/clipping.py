"""Norm clipping before the rule: a static bound, or ARC, adaptive robust clipping (Allouah et
al., 2024, "Boosting Robustness by Clipping Gradients in Distributed Learning")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.pre.base import PreAggregator, clip_rows, identity_members
from diversefl.round import RoundContext


@dataclass
class StaticClipping(PreAggregator):
    """Every update longer than ``bound`` (L2) is scaled down to it."""

    name: ClassVar[str] = "clipping"
    bound: float = 1.0  # the largest L2 norm an update keeps

    def __post_init__(self) -> None:
        if isinstance(self.bound, bool) or not self.bound > 0 or not math.isfinite(self.bound):
            raise ValueError(f"clipping: bound must be a finite number > 0, got {self.bound!r}")

    def __call__(self, updates: Tensor, ctx: RoundContext) -> tuple[Tensor, Tensor]:
        bound = torch.tensor(float(self.bound), dtype=updates.dtype, device=updates.device)
        return clip_rows(updates, bound), identity_members(updates.shape[0], updates.device)


def arc_count(k: int, f: int) -> int:
    """How many of ``k`` updates ARC clips: ``floor(2 (f / k) (k - f))``, at most k - 1."""
    return min(math.floor(2 * f * (k - f) / k), k - 1) if k else 0


@dataclass
class ARC(PreAggregator):
    """The ``floor(2 (f/n) (n - f))`` longest updates are clipped to the norm of the longest
    one left unclipped; no bound to tune."""

    name: ClassVar[str] = "arc"

    def __call__(self, updates: Tensor, ctx: RoundContext) -> tuple[Tensor, Tensor]:
        k = updates.shape[0]
        members = identity_members(k, updates.device)
        c = arc_count(k, min(ctx.f, k))
        if c == 0:
            return updates.clone(), members
        norms = torch.linalg.vector_norm(updates, dim=1)
        bound = torch.sort(norms, descending=True, stable=True).values[c]
        return clip_rows(updates, bound), members
