"""The round contract, below everything else in the package: what a rule, an attack or a
protocol is given in one round (:class:`RoundContext`), what a rule returns (:class:`Aggregate`)
and what a round leaves behind (:class:`RoundRecord`). All three are frozen; this module imports
nothing else of the package, so every layer above can depend on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class RoundContext:
    """Everything an aggregator or attack may look at in one round besides the updates.

    ``guiding`` is computed lazily on first use and then kept (only DiverseFL-style rules and
    the attacks that read it pay for it); ``byzantine`` is the true Byzantine mask, which only
    the oracle, the attacks and the metrics may read. ``params`` is the flat global model ``[d]``
    at this round, before its step (the simulator fills it; FLDetector takes its model
    differences from it); None where the caller does not give it.
    """

    round: int
    n: int
    f: int  # Byzantine clients the defense assumes (attack.f also when nobody attacks)
    generator: torch.Generator
    client_ids: Tensor | None = None  # defaults to 0..n-1
    byzantine: Tensor | None = None
    guiding_fn: Callable[[], Tensor] | None = field(default=None, compare=False)
    # Server-side gradient at the current model on training examples ``idx`` (1-D index
    # tensor), and the union of the clients' one-time samples: what a rule with a server
    # dataset (FLTrust's root data) may use.
    server_grad_fn: Callable[[Tensor], Tensor] | None = field(default=None, compare=False)
    shared_samples: Tensor | None = None
    # Sizes of the consecutive per-layer blocks of a flat update (sum = d), for rules that
    # test each layer on its own; None when the model's layout is unknown.
    layer_sizes: tuple[int, ...] | None = None
    num_classes: int | None = None  # classes of the task (label flip maps c -> C - 1 - c)
    # The flat global model ``[d]`` the round's updates were computed at (what FLDetector needs
    # for its model differences); None where the caller does not give it.
    params: Tensor | None = field(default=None, compare=False)
    # Guiding gradients on the two disjoint halves of each client's shared sample, ``[2, n, d]``
    # (computed lazily like ``guiding``): DiverseFL's ``min_cosine = "auto"`` reads each
    # client's noise floor from their cosine. None where the caller does not compute them.
    guiding_halves_fn: Callable[[], Tensor] | None = field(default=None, compare=False)
    # Each client's shared-sample size over its batch size ``[n]`` (the "auto" threshold's
    # batch-noise term); None where the caller does not know the batch sizes.
    sample_over_batch: Tensor | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.client_ids is None:
            object.__setattr__(self, "client_ids", torch.arange(self.n))

    @cached_property
    def guiding(self) -> Tensor:
        """Server-side guiding gradients ``[n, d]``, one per client, on its shared sample."""
        if self.guiding_fn is None:
            raise RuntimeError("this round context has no guiding gradients (no shared samples)")
        return self.guiding_fn()

    @cached_property
    def guiding_halves(self) -> Tensor:
        """Guiding gradients ``[2, n, d]`` on the two disjoint halves of each client's shared
        sample (row 0: its even sample positions, row 1: its odd ones)."""
        if self.guiding_halves_fn is None:
            raise RuntimeError("this round context has no half-sample guiding gradients")
        return self.guiding_halves_fn()

    def sharing_guides(self, **changes: Any) -> RoundContext:
        """A copy with ``changes`` whose guiding gradients (and half-sample guides) are this
        context's (computed at most once for both: the attackers' context reads the guides the
        server tests)."""
        if self.guiding_fn is not None and "guiding_fn" not in changes:
            changes["guiding_fn"] = lambda: self.guiding
        if self.guiding_halves_fn is not None and "guiding_halves_fn" not in changes:
            changes["guiding_halves_fn"] = lambda: self.guiding_halves
        return replace(self, **changes)

    def restricted(self, idx: Tensor) -> RoundContext:
        """The context of the clients ``idx`` only (f shrinks by the number of dropped rows)."""
        guiding_fn = None
        if self.guiding_fn is not None:
            guiding_fn = lambda: self.guiding[idx]  # noqa: E731
        halves_fn = None
        if self.guiding_halves_fn is not None:
            halves_fn = lambda: self.guiding_halves[:, idx]  # noqa: E731
        assert self.client_ids is not None  # set by __post_init__
        return replace(
            self,
            n=int(idx.numel()),
            f=max(0, self.f - (self.n - idx.numel())),
            client_ids=self.client_ids[idx],
            byzantine=None if self.byzantine is None else self.byzantine[idx],
            guiding_fn=guiding_fn,
            guiding_halves_fn=halves_fn,
        )


@dataclass(frozen=True)
class Aggregate:
    """Result of one aggregation: the update to step with and who contributed to it.

    ``scores`` holds per-client diagnostics ``[n]`` (e.g. DiverseFL's ``c1`` and ``c2``).
    """

    update: Tensor
    accepted: Tensor
    scores: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundRecord:
    """What happened in one round (kept for metrics and decisions.csv), on the CPU."""

    round: int
    lr: float
    byzantine: Tensor
    accepted: Tensor
    scores: dict[str, Tensor] = field(default_factory=dict)
