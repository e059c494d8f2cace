"""Plain averaging: the undefended baseline (what FedSGD does)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, RoundContext

# Columns per block of :func:`mean_of`: the masked block ``[n, BLOCK]`` is written to a reused
# buffer that stays in cache, instead of a whole masked copy of the updates allocated, written
# and read back (Multi-Krum at 100 x 199,210: 128 -> 88 ms on one thread, the copy being 80 MB).
# A multiple of the vector width, so every column is summed by the same code (same bits) as in
# one ``[n, d]`` sum.
BLOCK = 4096


def mean_of(updates: Tensor, mask: Tensor) -> Tensor:
    """Mean of the rows selected by ``mask``; zeros when no row is selected.

    ``sum_i mask_i * z_i / sum(mask)``, every row multiplied by its 0/1 weight and summed
    along the clients column block by column block; the same bits as the one-piece form
    (each column's sum adds the same values in the same order)."""
    k = mask.sum()
    if int(k) == 0:
        return torch.zeros(updates.shape[1], dtype=updates.dtype, device=updates.device)
    weights = mask[:, None].to(updates.dtype)
    n, d = updates.shape
    blocked = updates.device.type == "cpu" and updates.is_contiguous()
    if d <= 2 * BLOCK or not blocked or updates.requires_grad:
        return (updates * weights).sum(0) / k.to(updates.dtype)
    out = torch.empty(d, dtype=updates.dtype, device=updates.device)
    buffer = torch.empty(n, BLOCK, dtype=updates.dtype, device=updates.device)
    for start in range(0, d, BLOCK):
        block = updates[:, start : start + BLOCK]
        masked = buffer[:, : block.shape[1]]
        torch.mul(block, weights, out=masked)
        torch.sum(masked, 0, out=out[start : start + BLOCK])
    return out / k.to(updates.dtype)


@dataclass
class Mean(Aggregator):
    """Average every client's update (eq. 4 of the paper)."""

    name: ClassVar[str] = "mean"

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        accepted = torch.ones(updates.shape[0], dtype=torch.bool, device=updates.device)
        return Aggregate(update=updates.mean(0), accepted=accepted)
