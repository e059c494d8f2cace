"""DiverseFL (Prakash & Avestimehr): a per-client test of each update against a guiding
gradient the server computes on that client's own one-time sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, AggregatorError, RoundContext
from diversefl.aggregators.diversefl_rule import (
    DiverseFLTest,
    clip_to_guide,
    cosine,
    direction_pass,
    diversefl_accept,
    diversefl_scores,
    diversefl_test,
    layer_direction_pass,
)
from diversefl.aggregators.mean import mean_of
from diversefl.aggregators.quarantine import FailureLedger, quarantine_trusted

# The plain rule's helpers keep their import path here (the adaptive attack and the Flower
# tests import them from this module).
__all__ = [
    "DiverseFL",
    "DiverseFLTest",
    "cosine",
    "diversefl_accept",
    "diversefl_scores",
    "diversefl_test",
    "layer_direction_pass",
]


@dataclass
class DiverseFL(Aggregator):
    """Average the updates that pass both of DiverseFL's conditions (eqs. 9-11).

    Client j is accepted when ``guiding_j . z_j > 0`` and ``eps1 < |z_j| / |guiding_j| < eps2``;
    the aggregate is the mean of the accepted updates. When every client is rejected the
    aggregate is zero, so that round's server step applies only the L2 decay
    ``theta -= lr * lambda * theta`` (no client is trusted, so the model does not move toward
    any of them). Per-client ``c1`` and ``c2`` are returned as scores every round.

    Four optional hardenings against attacks that pass the test in some rounds (label flip,
    the adaptive attack), all off by default so the rule is the paper's:

    - ``min_cosine`` > 0 replaces the bare sign test C1 > 0 by ``cos(guiding_j, z_j) >
      min_cosine`` (``min_cosine = 0`` is exactly the sign test); score ``cos``.
    - ``per_layer`` applies the direction test (sign, or cosine with ``min_cosine``) to every
      layer's block of the update on its own, in addition to the whole vector: a flipped
      output layer cannot hide behind agreeing hidden layers. Score ``layers_ok`` (0/1).
    - ``clip_to_guide`` scales every accepted update down to at most its guide's norm before
      averaging (``z_j * min(1, |g_j| / |z_j|)``): an accepted Byzantine update can then push no
      harder than the client's own data would, which bounds what an attacker who stays inside
      the acceptance region (top of the ratio band) can do per round.
    - ``quarantine`` > 0 keeps, per client id, how often its update failed the per-round test;
      once a client has been tested ``quarantine_after`` times, it is rejected in every round
      in which its failure rate so far exceeds ``quarantine`` (it regains trust only by passing
      enough later rounds to bring the rate back down); score ``fail_rate``. The counts are
      state: they travel with checkpoints. ``quarantine_on = "direction"`` counts only failures
      of the direction test (sign/cosine, per layer if set): honest clients whose update norm
      often leaves the eps band (heavy-tailed per-example gradients, tiny samples) then keep
      their standing, while a client whose updates keep pointing away from its own data loses
      it. Norm failures are still rejected in their round.

    Composition: the paper's rule is the pure :func:`diversefl_test`; ``min_cosine``
    (:func:`direction_pass`) and ``per_layer`` (:func:`layer_direction_pass`) replace and
    tighten its direction condition, the ratio band is kept; ``quarantine`` then removes the
    clients :func:`quarantine_trusted` distrusts given the counts in ``self.ledger`` (a
    :class:`FailureLedger`); ``clip_to_guide`` (:func:`clip_to_guide`) rescales the rows before
    the accepted ones are averaged.
    """

    name: ClassVar[str] = "diversefl"
    needs_guiding: ClassVar[bool] = True
    eps1: float = 0.5  # lower bound on |z| / |guiding| (paper: 0.5)
    eps2: float = 2.0  # upper bound on |z| / |guiding| (paper: 2)
    min_cosine: float = 0.0  # accept only cos(guiding, z) > min_cosine (0: the paper's C1 > 0)
    per_layer: bool = False  # also apply the direction test to each layer's block
    clip_to_guide: bool = False  # scale accepted updates down to at most their guide's norm
    quarantine: float = 0.0  # reject clients whose failure rate so far exceeds this (0: off)
    quarantine_after: int = 10  # tests a client must have had before quarantine applies
    quarantine_on: str = "any"  # count failures of the whole test ("any") or of "direction" only

    def __post_init__(self) -> None:
        if not 0 <= self.eps1 < self.eps2:
            raise AggregatorError(
                f"diversefl: need 0 <= eps1 < eps2, got eps1={self.eps1}, eps2={self.eps2}"
            )
        if not 0 <= self.min_cosine < 1:
            raise AggregatorError(f"diversefl: min_cosine must be in [0, 1), got {self.min_cosine}")
        if not 0 <= self.quarantine < 1:
            raise AggregatorError(f"diversefl: quarantine must be in [0, 1), got {self.quarantine}")
        if self.quarantine_on not in ("any", "direction"):
            raise AggregatorError(
                f"diversefl: quarantine_on must be 'any' or 'direction', got {self.quarantine_on!r}"
            )
        if self.quarantine_after < 1:
            raise AggregatorError(
                f"diversefl: quarantine_after must be >= 1, got {self.quarantine_after}"
            )
        self.ledger = FailureLedger()  # quarantine's per-client counts (its state)

    def check(self, n: int, f: int) -> None:
        """DiverseFL's test is per client, so any n >= 1 works (no bound on f)."""
        if n < 1:
            raise AggregatorError(f"diversefl: needs at least one client, got n={n}")

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        """The paper's test (:func:`diversefl_test`), the hardenings composed around it, and
        the mean of the accepted (optionally clipped) updates."""
        guiding = self._guiding(updates, ctx)
        test = diversefl_test(guiding, updates, self.eps1, self.eps2)
        # cos is logged for every setting: the honest clients' cosines are what `min_cosine` is
        # chosen from (`diversefl detection --cosines`), so a run of the paper's rule needs them
        scores = test.scores()
        direction = direction_pass(test, self.min_cosine)
        if self.per_layer:
            layers_ok = layer_direction_pass(guiding, updates, self._sizes(ctx), self.min_cosine)
            scores["layers_ok"] = layers_ok.to(updates.dtype)
            direction = direction & layers_ok
        passed = direction & test.in_band  # the paper's test.accepted when nothing hardens it
        accepted = passed
        if self.quarantine > 0:
            self.ledger.begin_round(ctx.round)
            counted = direction if self.quarantine_on == "direction" else passed
            assert ctx.client_ids is not None  # RoundContext.__post_init__ fills it
            rate, seen = self.ledger.record(ctx.client_ids, counted)
            scores["fail_rate"] = rate.to(updates.dtype)
            trusted = quarantine_trusted(rate, seen, self.quarantine, self.quarantine_after)
            accepted = passed & trusted
        if self.clip_to_guide:
            updates = clip_to_guide(updates, test.g_norm, test.z_norm)
        return Aggregate(update=mean_of(updates, accepted), accepted=accepted, scores=scores)

    @staticmethod
    def _guiding(updates: Tensor, ctx: RoundContext) -> Tensor:
        """The round's guiding gradients in the updates' dtype, checked against their shape."""
        guiding = ctx.guiding.to(updates.dtype)
        if guiding.shape != updates.shape:
            raise AggregatorError(
                f"guiding gradients {tuple(guiding.shape)} do not match updates "
                f"{tuple(updates.shape)}"
            )
        return guiding

    @staticmethod
    def _sizes(ctx: RoundContext) -> tuple[int, ...]:
        """The model's layer sizes, which ``per_layer`` needs."""
        if ctx.layer_sizes is None:
            raise AggregatorError(
                "diversefl: per_layer needs the model's layer sizes (ctx.layer_sizes)"
            )
        return ctx.layer_sizes

    def _aggregate_valid_subset(
        self, updates: Tensor, valid: Tensor, ctx: RoundContext
    ) -> Aggregate:
        """As every rule, on the well-formed rows; with quarantine, a malformed update (NaN,
        infinity, wrong shape) also counts as a failed test, so that a client cannot keep its
        standing by sending garbage in the rounds it would fail."""
        if self.quarantine > 0:
            self.ledger.begin_round(ctx.round)  # also when no row is valid (none is recorded)
        out = super()._aggregate_valid_subset(updates, valid, ctx)
        if self.quarantine > 0:
            assert ctx.client_ids is not None  # RoundContext.__post_init__ fills it
            bad = (~valid).nonzero().flatten().to(ctx.client_ids.device)
            self.ledger.charge(ctx.client_ids[bad])
        return out

    def state_dict(self) -> dict[str, Any]:
        """The per-client test counts of the quarantine rule."""
        return self.ledger.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counts saved by :meth:`state_dict`."""
        if state:
            self.ledger.load_state_dict(state)
