"""DiverseFL's quarantine hardening: per client id, how often its update failed the per-round
test so far (:class:`FailureLedger`, the state, which travels with checkpoints), and who is
still trusted given those counts (:func:`quarantine_trusted`, a pure function)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from diversefl.aggregators.base import AggregatorError


def quarantine_trusted(rate: Tensor, seen: Tensor, threshold: float, after: int) -> Tensor:
    """Per client: still trusted, i.e. tested fewer than ``after`` times so far, or failing at a
    rate of at most ``threshold``."""
    return (seen < after) | (rate <= threshold)


def client_index(ids: Tensor) -> Tensor:
    """Client ids as an int64 CPU index into the per-client counts; a negative id is an error
    (it would silently count against another client, or fail with an IndexError)."""
    ids = ids.cpu().long()
    if ids.numel() and int(ids.min()) < 0:
        raise AggregatorError(f"diversefl: client ids must be >= 0, got {int(ids.min())}")
    return ids


class FailureLedger:
    """Per client id, the rounds it was tested in and the rounds it failed (float64 counts).

    A round is opened with :meth:`begin_round`; opening the same round again (the rule called
    twice in one round) first restores the counts from before it, so a round is never counted
    twice.
    """

    def __init__(self) -> None:
        self.tested = torch.zeros(0, dtype=torch.float64)  # per client id: rounds tested
        self.failed = torch.zeros(0, dtype=torch.float64)  # per client id: rounds failed
        self.round: int | None = None
        self._before: tuple[Tensor, Tensor] | None = None  # counts before `self.round`

    def begin_round(self, r: int) -> None:
        """Start counting round ``r``; a repeated round replaces its earlier results."""
        if r == self.round and self._before is not None:
            self.tested, self.failed = (t.clone() for t in self._before)
        else:
            self._before = (self.tested.clone(), self.failed.clone())
            self.round = r

    def record(self, ids: Tensor, passed: Tensor) -> tuple[Tensor, Tensor]:
        """Add one test per client ``ids`` (``passed [n]`` bool); return each one's failure
        rate so far and its number of tests, on ``passed``'s device."""
        index = client_index(ids)
        self._count(index, (~passed).cpu().double())
        seen = self.tested[index]
        return (self.failed[index] / seen).to(passed.device), seen.to(passed.device)

    def charge(self, ids: Tensor) -> None:
        """Add one failed test per client ``ids`` (a malformed update counts as a failure)."""
        index = client_index(ids)
        self._count(index, torch.ones(index.numel(), dtype=torch.float64))

    def _count(self, ids: Tensor, failed: Tensor) -> None:
        """One more test for clients ``ids``, ``failed`` (0/1 per client) of them failed."""
        size = int(ids.max()) + 1 if ids.numel() else 0
        if size > self.tested.numel():
            grow = size - self.tested.numel()
            self.tested = torch.cat([self.tested, torch.zeros(grow, dtype=torch.float64)])
            self.failed = torch.cat([self.failed, torch.zeros(grow, dtype=torch.float64)])
        self.tested[ids] += 1
        self.failed[ids] += failed

    def state_dict(self) -> dict[str, Any]:
        """The counts and the last round counted (what a checkpoint keeps)."""
        return {"tested": self.tested.clone(), "failed": self.failed.clone(), "round": self.round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counts saved by :meth:`state_dict`."""
        self.tested = state["tested"].clone()
        self.failed = state["failed"].clone()
        self.round = state["round"]
        self._before = None
