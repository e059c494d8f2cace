"""DiverseFL (Prakash & Avestimehr): a per-client test of each update against a guiding
gradient the server computes on that client's own one-time sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, AggregatorError, RoundContext
from diversefl.aggregators.diversefl_auto import (
    AUTO_CAP,
    AutoThreshold,
    auto_cone,
    predicted_honest_ratio,
    spread_threshold,
)
from diversefl.aggregators.diversefl_bounds import BOUNDS, Bound, bounded_mean
from diversefl.aggregators.diversefl_rule import (
    DiverseFLTest,
    clip_to_guide,
    cosine,
    cosine_pass,
    direction_pass,
    diversefl_accept,
    diversefl_scores,
    diversefl_test,
    layer_direction_pass,
    ratio_in_band,
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

    Optional hardenings against attacks that pass the test in some rounds (label flip, the
    adaptive attack), all off by default so the rule is the paper's:

    - ``min_cosine`` > 0 replaces the bare sign test C1 > 0 by ``cos(guiding_j, z_j) >
      min_cosine`` (``min_cosine = 0`` is exactly the sign test); score ``cos``.
    - ``min_cosine = "auto"`` sets that threshold per client and round from the cosine of two
      guiding gradients the server computes on the disjoint halves of the client's own sample
      (``ctx.guiding_halves``): ``auto_margin * sqrt(2 c_half / (1 + c_half))``, the predicted
      honest cosine times a margin, clipped to ``[0, 0.95]`` and smoothed per client id with an
      exponential moving average (``auto_decay``); the derivation is in
      :mod:`diversefl.aggregators.diversefl_auto`. A client whose sample cannot be halved (fewer
      than 2 rows) uses ``auto_fallback`` (a warning names it). Score ``threshold``; the
      averages are state and travel with checkpoints. ``auto_batch_noise = True`` also counts
      the update's own batch noise (sample size over batch size per client,
      ``ctx.sample_over_batch``), which lowers the prediction where the batch is not much
      larger than the sample. ``auto_mad = k`` (> 0) also reads the round's spread: every
      client's threshold is raised to its prediction times the median minus ``k`` MADs of the
      round's cosine-to-prediction ratios over the clients
      (:func:`~diversefl.aggregators.diversefl_auto.spread_threshold`). ``auto_ratio = True``
      (with ``auto_batch_noise``) lowers the ratio band's lower edge to ``eps1`` times the
      client's predicted honest ratio ``|z| / |g|`` (at most 1; score ``ratio_lo``,
      :func:`~diversefl.aggregators.diversefl_auto.predicted_honest_ratio`): a guide on fewer
      rows than the batch is the noisier and longer of the two, so late in training an honest
      update is about ``sqrt(sample / batch)`` times its guide's norm, which the paper's fixed
      0.5 rejects; the upper edge stays ``eps2``. ``auto_clip = True`` (with
      ``auto_batch_noise``, and ``clip_to_guide`` or a ``bound``) clips accepted updates to that
      predicted honest norm, ``ratio * |g|`` (score ``clip_ratio``), instead of the guide's own:
      a guide on a small sample is long with noise, and an attacker clipped to it could push
      harder than the client's honest update would.
    - ``per_layer`` applies the direction test (sign, or cosine with ``min_cosine``) to every
      layer's block of the update on its own, in addition to the whole vector: a flipped
      output layer cannot hide behind agreeing hidden layers. Score ``layers_ok`` (0/1).
    - ``clip_to_guide`` scales every accepted update down to at most its guide's norm before
      averaging (``z_j * min(1, |g_j| / |z_j|)``): an accepted Byzantine update can then push no
      harder than the client's own data would, which bounds what an attacker who stays inside
      the acceptance region (top of the ratio band) can do per round.
    - ``bound`` limits what an accepted update can do beyond its norm
      (:mod:`diversefl.aggregators.diversefl_bounds`; each also clips to the guide's norm):
      ``"cone"`` projects it onto the cone of cosine ``cone_cos`` (default: the threshold in
      use; ``"auto"`` with ``min_cosine = "auto"``: each client's predicted honest cosine, the
      threshold without its margin) around its guide, ``"orthogonal"`` keeps only its
      component along its guide,
      ``"agreement"`` weights it by its cosine with its guide in the mean.
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
    (:func:`direction_pass`, or :func:`cosine_pass` with the per-client "auto" thresholds) and
    ``per_layer`` (:func:`layer_direction_pass`) replace and tighten its direction condition,
    the ratio band is kept; ``quarantine`` then removes the clients :func:`quarantine_trusted`
    distrusts given the counts in ``self.ledger`` (a :class:`FailureLedger`); ``clip_to_guide``
    (:func:`clip_to_guide`) rescales the rows and ``bound`` (:func:`bounded_mean`) replaces the
    mean of the accepted ones.
    """

    name: ClassVar[str] = "diversefl"
    needs_guiding: ClassVar[bool] = True
    eps1: float = 0.5  # lower bound on |z| / |guiding| (paper: 0.5)
    eps2: float = 2.0  # upper bound on |z| / |guiding| (paper: 2)
    # accept only cos(guiding, z) > min_cosine (0: the paper's C1 > 0); "auto": a threshold per
    # client and round from the cosine of guides on the two halves of its sample
    min_cosine: float | Literal["auto"] = 0.0
    auto_margin: float = 0.75  # "auto": the threshold's share of the predicted honest cosine
    auto_decay: float = 0.9  # "auto": weight of the past in each client's moving average
    auto_fallback: float = 0.0  # "auto": the threshold of a client whose sample has < 2 rows
    # "auto": also count the update's own batch noise (sample size / batch size per client,
    # from ctx.sample_over_batch) in the predicted honest cosine
    auto_batch_noise: bool = False
    # "auto": raise thresholds to the prediction times (median - auto_mad MADs) of the round's
    # cosine / prediction ratios over the clients (0: off)
    auto_mad: float = 0.0
    # "auto" + auto_batch_noise: the ratio band's lower edge is eps1 times each client's
    # predicted honest |z| / |g| (at most 1) instead of eps1
    auto_ratio: bool = False
    # "auto" + auto_batch_noise, with clip_to_guide or a bound: clip accepted updates to the
    # predicted honest norm (predicted ratio x |g|, at most |g|) instead of |g|
    auto_clip: bool = False
    per_layer: bool = False  # also apply the direction test to each layer's block
    clip_to_guide: bool = False  # scale accepted updates down to at most their guide's norm
    # bound what an accepted update can do: "none", "cone", "orthogonal" or "agreement"
    bound: Bound = "none"
    # bound = "cone": the cone's cosine (None: the threshold; "auto": the predicted honest
    # cosine behind the "auto" threshold, i.e. the threshold over auto_margin)
    cone_cos: float | Literal["auto"] | None = None
    quarantine: float = 0.0  # reject clients whose failure rate so far exceeds this (0: off)
    quarantine_after: int = 10  # tests a client must have had before quarantine applies
    quarantine_on: str = "any"  # count failures of the whole test ("any") or of "direction" only

    def __post_init__(self) -> None:
        if not 0 <= self.eps1 < self.eps2:
            raise AggregatorError(
                f"diversefl: need 0 <= eps1 < eps2, got eps1={self.eps1}, eps2={self.eps2}"
            )
        self._check_threshold_settings()
        if self.bound not in BOUNDS:
            raise AggregatorError(f"diversefl: bound must be one of {BOUNDS}, got {self.bound!r}")
        self._check_cone_cos()
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
        self.auto: AutoThreshold | None = None  # "auto"'s per-client averages (its state)
        if self.min_cosine == "auto":
            self.auto = AutoThreshold(self.auto_margin, self.auto_decay, self.auto_fallback)

    def _check_threshold_settings(self) -> None:
        """``min_cosine`` and the "auto" settings, one clear error each."""
        if isinstance(self.min_cosine, str):
            if self.min_cosine != "auto":
                raise AggregatorError(
                    f"diversefl: min_cosine must be a number in [0, 1) or 'auto', got "
                    f"{self.min_cosine!r}"
                )
            if self.per_layer:
                raise AggregatorError(
                    "diversefl: per_layer needs a fixed min_cosine (a layer's noise floor is not "
                    "the whole update's, which min_cosine = 'auto' measures)"
                )
        elif not 0 <= self.min_cosine < 1:
            raise AggregatorError(f"diversefl: min_cosine must be in [0, 1), got {self.min_cosine}")
        if not 0 < self.auto_margin <= 1:
            raise AggregatorError(
                f"diversefl: auto_margin must be in (0, 1], got {self.auto_margin}"
            )
        if not 0 <= self.auto_decay < 1:
            raise AggregatorError(f"diversefl: auto_decay must be in [0, 1), got {self.auto_decay}")
        if self.auto_batch_noise and self.min_cosine != "auto":
            raise AggregatorError(
                "diversefl: auto_batch_noise = true refines min_cosine = 'auto'; got min_cosine "
                f"= {self.min_cosine!r}"
            )
        if self.auto_mad < 0 or (self.auto_mad > 0 and self.min_cosine != "auto"):
            raise AggregatorError(
                f"diversefl: auto_mad must be >= 0 and needs min_cosine = 'auto', got auto_mad = "
                f"{self.auto_mad}, min_cosine = {self.min_cosine!r}"
            )
        if self.auto_ratio and not self.auto_batch_noise:
            raise AggregatorError(
                "diversefl: auto_ratio = true predicts the honest |z| / |g| from the batch-noise "
                "term; it needs min_cosine = 'auto' and auto_batch_noise = true, got "
                f"min_cosine = {self.min_cosine!r}, auto_batch_noise = {self.auto_batch_noise}"
            )
        if self.auto_clip and not (
            self.auto_batch_noise and (self.clip_to_guide or self.bound != "none")
        ):
            raise AggregatorError(
                "diversefl: auto_clip = true clips to the predicted honest norm; it needs "
                "min_cosine = 'auto', auto_batch_noise = true and clip_to_guide = true or a "
                f"bound, got auto_batch_noise = {self.auto_batch_noise}, clip_to_guide = "
                f"{self.clip_to_guide}, bound = {self.bound!r}"
            )
        if not 0 <= self.auto_fallback <= AUTO_CAP:
            raise AggregatorError(
                f"diversefl: auto_fallback must be in [0, {AUTO_CAP}], got {self.auto_fallback}"
            )

    def _check_cone_cos(self) -> None:
        """``cone_cos``: a cosine in [0, 1), or "auto" with the "auto" threshold and the cone."""
        if isinstance(self.cone_cos, str):
            if self.cone_cos != "auto":
                raise AggregatorError(
                    f"diversefl: cone_cos must be a number in [0, 1) or 'auto', got "
                    f"{self.cone_cos!r}"
                )
            if self.min_cosine != "auto" or self.bound != "cone":
                raise AggregatorError(
                    "diversefl: cone_cos = 'auto' is the predicted honest cosine behind "
                    "min_cosine = 'auto'; it needs min_cosine = 'auto' and bound = 'cone', got "
                    f"min_cosine = {self.min_cosine!r}, bound = {self.bound!r}"
                )
        elif self.cone_cos is not None and not 0 <= self.cone_cos < 1:
            raise AggregatorError(f"diversefl: cone_cos must be in [0, 1), got {self.cone_cos}")

    def check(self, n: int, f: int) -> None:
        """DiverseFL's test is per client, so any n >= 1 works (no bound on f)."""
        if n < 1:
            raise AggregatorError(f"diversefl: needs at least one client, got n={n}")

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        """The paper's test (:func:`diversefl_test`), the hardenings composed around it, and
        the mean of the accepted (optionally clipped or bounded) updates."""
        guiding = self._guiding(updates, ctx)
        test = diversefl_test(guiding, updates, self.eps1, self.eps2)
        # cos is logged for every setting: the honest clients' cosines are what `min_cosine` is
        # chosen from (`diversefl detection --cosines`), so a run of the paper's rule needs them
        scores = test.scores()
        threshold = base = self._threshold(updates, ctx)
        if isinstance(threshold, Tensor) and self.auto_mad > 0:
            threshold = spread_threshold(test.cos, threshold, self.auto_margin, self.auto_mad)
        if isinstance(threshold, Tensor):  # "auto": one threshold per client
            scores["threshold"] = threshold
            direction = cosine_pass(test.cos, threshold)
        else:
            direction = direction_pass(test, threshold)
        if self.per_layer:
            assert isinstance(threshold, float | int)  # per_layer refuses "auto"
            layers_ok = layer_direction_pass(guiding, updates, self._sizes(ctx), threshold)
            scores["layers_ok"] = layers_ok.to(updates.dtype)
            direction = direction & layers_ok
        in_band = test.in_band
        ratio = None  # auto_ratio, auto_clip: each client's predicted honest |z| / |g|
        if self.auto_ratio or self.auto_clip:
            assert isinstance(base, Tensor)  # both need min_cosine = "auto"
            ratio = self._predicted_ratio(base, ctx)
        if self.auto_ratio:
            assert ratio is not None
            ratio_lo = (self.eps1 * ratio).to(test.c2.dtype)
            scores["ratio_lo"] = ratio_lo
            in_band = ratio_in_band(test.c2, ratio_lo, self.eps2)
        passed = direction & in_band  # the paper's test.accepted when nothing hardens it
        accepted = passed
        if self.quarantine > 0:
            accepted = passed & self._trusted(passed, direction, ctx, scores)
        g_norm, bound_guides = test.g_norm, guiding
        if self.auto_clip:  # clip to ratio * |g|: the same directions, shorter guides
            assert ratio is not None
            clip_ratio = ratio.to(guiding.dtype)
            scores["clip_ratio"] = clip_ratio
            g_norm, bound_guides = g_norm * clip_ratio, guiding * clip_ratio[:, None]
        if self.clip_to_guide:
            updates = clip_to_guide(updates, g_norm, test.z_norm)
        if self.bound == "none":
            update = mean_of(updates, accepted)
        else:
            update = bounded_mean(self.bound, bound_guides, updates, accepted, self._cone(base))
        return Aggregate(update=update, accepted=accepted, scores=scores)

    def _threshold(self, updates: Tensor, ctx: RoundContext) -> float | Tensor:
        """The direction threshold: ``min_cosine`` itself, or with "auto" the round's
        per-client thresholds ``[n]`` (in the updates' dtype and device)."""
        if self.auto is None:
            assert not isinstance(self.min_cosine, str)  # "auto" sets self.auto
            return self.min_cosine
        if ctx.guiding_halves_fn is None:
            raise AggregatorError(
                "diversefl: min_cosine = 'auto' needs the guiding gradients on the halves of "
                "each client's sample (ctx.guiding_halves), which this caller does not compute"
            )
        halves = ctx.guiding_halves.to(updates.dtype)
        if halves.shape != (2, *updates.shape):
            raise AggregatorError(
                f"half-sample guiding gradients {tuple(halves.shape)} do not match updates "
                f"{tuple(updates.shape)} (expected [2, n, d])"
            )
        assert ctx.client_ids is not None  # RoundContext.__post_init__ fills it
        q = None
        if self.auto_batch_noise:
            if ctx.sample_over_batch is None:
                raise AggregatorError(
                    "diversefl: auto_batch_noise needs each client's sample size over its batch "
                    "size (ctx.sample_over_batch), which this caller does not give"
                )
            q = ctx.sample_over_batch
        t = self.auto.thresholds(ctx.round, ctx.client_ids, halves, q)
        return t.to(dtype=updates.dtype, device=updates.device)

    def _predicted_ratio(self, base: Tensor, ctx: RoundContext) -> Tensor:
        """``auto_ratio`` and ``auto_clip``: per client, its predicted honest ratio ``|z| / |g|``
        at most 1 (1 for a client never calibrated, whose threshold is the fallback)."""
        assert self.auto is not None and ctx.client_ids is not None
        assert ctx.sample_over_batch is not None  # _threshold refused its absence
        ratio = predicted_honest_ratio(base.double() / self.auto_margin, ctx.sample_over_batch)
        ratio = ratio.clamp(max=1.0).to(base.device)
        known = self.auto.calibrated(ctx.client_ids).to(base.device)
        return torch.where(known, ratio, 1.0)

    def _cone(self, threshold: float | Tensor) -> float | Tensor:
        """The cone's cosine (one, or one per client) for ``bound = "cone"`` (``threshold``:
        the "auto" one before ``auto_mad`` raises it, whose ratio to the margin is the
        prediction)."""
        if self.cone_cos is None:
            return threshold
        if self.cone_cos == "auto":
            assert isinstance(threshold, Tensor)  # cone_cos = "auto" needs min_cosine = "auto"
            return auto_cone(threshold, self.auto_margin)
        return self.cone_cos

    def _trusted(
        self, passed: Tensor, direction: Tensor, ctx: RoundContext, scores: dict[str, Tensor]
    ) -> Tensor:
        """Quarantine: record this round's failures, log the rates, and say who is trusted."""
        self.ledger.begin_round(ctx.round)
        counted = direction if self.quarantine_on == "direction" else passed
        assert ctx.client_ids is not None  # RoundContext.__post_init__ fills it
        rate, seen = self.ledger.record(ctx.client_ids, counted)
        scores["fail_rate"] = rate.to(scores["cos"].dtype)
        return quarantine_trusted(rate, seen, self.quarantine, self.quarantine_after)

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
        """The per-client test counts of the quarantine rule, and with "auto" the per-client
        threshold averages (key ``auto``)."""
        state = self.ledger.state_dict()
        if self.auto is not None:
            state["auto"] = self.auto.ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counts (and "auto"'s averages) saved by :meth:`state_dict`."""
        if not state:
            return
        self.ledger.load_state_dict(state)
        if self.auto is not None:
            if "auto" not in state:
                raise AggregatorError(
                    "diversefl: min_cosine = 'auto', but the saved state holds no thresholds"
                )
            self.auto.ema.load_state_dict(state["auto"])
