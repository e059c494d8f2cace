"""A pre-aggregator: a transform of the stacked updates applied before the rule.

It maps ``k`` rows to ``m`` rows and says which input rows make up each output row (the
membership ``[m, k]``), so that the pipeline can tell which clients the rule accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.round import RoundContext


@dataclass
class PreAggregator:
    """Base class: subclasses are dataclasses whose fields are the stage's settings."""

    name: ClassVar[str] = "pre"
    # True when row i of the output stands for client i (mixing, clipping); False when the
    # rows are groups of clients (bucketing), which rules reading one client's own data refuse
    keeps_rows: ClassVar[bool] = True

    def out_rows(self, n: int) -> int:
        """How many rows come out for ``n`` rows in."""
        return n

    def check(self, n: int, f: int) -> None:
        """Raise ValueError when the stage cannot run for n rows, f Byzantine."""

    def __call__(self, updates: Tensor, ctx: RoundContext) -> tuple[Tensor, Tensor]:
        """The transformed rows ``[m, d]`` and the membership ``[m, k]`` (bool)."""
        raise NotImplementedError


def identity_members(k: int, device: torch.device) -> Tensor:
    """Row i of the output is made of input row i alone."""
    return torch.eye(k, dtype=torch.bool, device=device)


def clip_rows(updates: Tensor, bound: Tensor) -> Tensor:
    """Each row scaled down to the norm ``bound`` (a scalar or ``[k]``) when it is longer."""
    norms = torch.linalg.vector_norm(updates, dim=1)
    scale = torch.where(norms > bound, bound / norms.clamp_min(torch.finfo(updates.dtype).tiny), 1)
    return updates * scale[:, None]
