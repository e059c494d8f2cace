"""The one-time samples on the server: who holds which partition (:class:`Roster`) and the
uploaded examples laid out for batched work (:class:`SamplePool`).

A partition is held by the one node whose valid sample claims it. A second valid claim on a
partition, whenever it arrives (before training or, from a node that connects late, during
it), excludes every claimant for the rest of the run: the server cannot tell which one holds
the partition, and keeping the first would let a node that connects first take a partition
over and shut its owner out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from diversefl.engine.simulator import length_mask, pad_rows
from diversefl.flower.replies import SharedSample


@dataclass
class Roster:
    """Which node holds which of the n partitions, and why the others hold none."""

    n: int
    held: dict[int, SharedSample] = field(default_factory=dict)  # partition -> its sample
    conflicts: dict[int, list[int]] = field(default_factory=dict)  # partition -> claimants
    reasons: dict[int, str] = field(default_factory=dict)  # partition -> why it has no sample
    rejects: dict[int, str] = field(default_factory=dict)  # node id -> why it was refused
    unattributed: list[str] = field(default_factory=list)  # refusals of unknown partition

    def claim(self, sample: SharedSample) -> list[int]:
        """Record a valid claim. Returns the claimants of the partition when this claim is
        not the only one (all of them are then excluded), else an empty list."""
        j = sample.partition_id
        if j in self.conflicts:
            self.conflicts[j].append(sample.node_id)
            return self.conflicts[j]
        if j in self.held:
            first = self.held.pop(j)
            self.conflicts[j] = [first.node_id, sample.node_id]
            return self.conflicts[j]
        self.held[j] = sample
        return []

    def settled(self, expected: set[int]) -> bool:
        """Every expected partition has been claimed (held, or lost to a conflict)."""
        return all(j in self.held or j in self.conflicts for j in expected)

    def node_ids(self) -> list[int | None]:
        """Each partition's node id (None: the partition is excluded)."""
        return [self.held[j].node_id if j in self.held else None for j in range(self.n)]

    def excluded(self) -> dict[int, str]:
        """Every partition without a holder, with the reason (or the refusals of nodes whose
        partition is unknown, which may have been its owner)."""
        out = {}
        for j in range(self.n):
            if j in self.held:
                continue
            why = self.reasons.get(j)
            if why is None and self.unattributed:
                why = "no usable sample; refused: " + "; ".join(self.unattributed)
            out[j] = why or "no node sent a sample for it"
        return out


@dataclass(frozen=True)
class SamplePool:
    """The held samples as padded tensors on the server's device.

    Row j of ``x [n, S, ...]``, ``y [n, S]`` and ``w [n, S]`` is partition j's sample (``w``: 1
    for an example, 0 for padding; a partition without a sample is all padding), what the
    guiding gradients are computed on. ``keys [P]`` name the P pooled examples for rules with
    server data (``ctx.shared_samples``, FLTrust's root data): their training-set indices when
    the server verified them (``verify-samples``), else their positions 0..P-1 (partition by
    partition), which no node can choose. :meth:`examples` returns the examples of some keys.
    """

    x: Tensor
    y: Tensor
    w: Tensor
    keys: Tensor
    position: Tensor  # [max key + 1]: the pool position of each key, -1 where none

    @classmethod
    def build(
        cls,
        held: Mapping[int, SharedSample],
        n: int,
        input_shape: tuple[int, ...],
        device: torch.device,
        keyed_by_index: bool,
    ) -> SamplePool:
        """The pool of the samples ``held`` (partition -> sample)."""
        empty = torch.zeros(0, dtype=torch.long)
        idx, lengths = pad_rows([held[j].indices if j in held else empty for j in range(n)])
        S = idx.shape[1]
        w = length_mask(lengths, S)
        x = torch.zeros((n, S, *input_shape))
        y = torch.zeros(n, S, dtype=torch.long)
        for j, s in held.items():
            x[j, : len(s.y)] = s.x
            y[j, : len(s.y)] = s.y
        keep = w > 0
        count = int(keep.sum())
        keys = idx[keep] if keyed_by_index else torch.arange(count)
        position = torch.full((int(keys.max()) + 1 if count else 0,), -1, dtype=torch.long)
        position[keys] = torch.arange(count)
        return cls(x.to(device), y.to(device), w.to(device), keys, position)

    @property
    def sizes(self) -> list[int]:
        """Each partition's sample size (0: excluded)."""
        return [int(v) for v in self.w.sum(1).tolist()]

    def examples(self, keys: Tensor) -> tuple[Tensor, Tensor]:
        """The pooled examples ``[k, ...]`` and labels ``[k]`` named by ``keys``."""
        keys = keys.cpu()
        inside = (keys >= 0) & (keys < self.position.numel())
        pos = torch.full_like(keys, -1)
        pos[inside] = self.position[keys[inside]]
        if bool((pos < 0).any()):
            raise ValueError("server_grad_fn: the server only holds the uploaded samples")
        pos = pos.to(self.x.device)
        keep = self.w > 0
        return self.x[keep][pos], self.y[keep][pos]
