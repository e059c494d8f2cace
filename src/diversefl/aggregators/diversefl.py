"""DiverseFL (Prakash & Avestimehr): a per-client test of each update against a guiding
gradient the server computes on that client's own one-time sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, AggregatorError, RoundContext
from diversefl.aggregators.mean import mean_of


def _dots_and_norms(guiding: Tensor, updates: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-client ``guiding . update``, ``|guiding|`` and ``|update|``: one pass each."""
    return (guiding * updates).sum(dim=1), guiding.norm(dim=1), updates.norm(dim=1)


def diversefl_scores(guiding: Tensor, updates: Tensor) -> tuple[Tensor, Tensor]:
    """Per-client C1 = sign(guiding . update) (eq. 7) and C2 = |update| / |guiding| (eq. 8).

    A zero guiding gradient gives C2 = inf (or NaN for a zero update too), which fails eq. 10.
    """
    dots, g_norm, z_norm = _dots_and_norms(guiding, updates)
    return torch.sign(dots), z_norm / g_norm


def diversefl_accept(c1: Tensor, c2: Tensor, eps1: float, eps2: float) -> Tensor:
    """Algorithm 1, line 10: accept iff C1 > 0 and eps1 < C2 < eps2 (NaN fails)."""
    return (c1 > 0) & (c2 > eps1) & (c2 < eps2)


def _cosine(dots: Tensor, g_norm: Tensor, z_norm: Tensor) -> Tensor:
    """Cosine from precomputed dot products and norms (0 where either vector is zero)."""
    norms = g_norm * z_norm
    return torch.where(norms > 0, dots / norms.clamp_min(torch.finfo(dots.dtype).tiny), 0.0)


def cosine(guiding: Tensor, updates: Tensor) -> Tensor:
    """Per-client cosine similarity of guiding gradient and update (0 where either is zero)."""
    return _cosine(*_dots_and_norms(guiding, updates))


def _direction_ok(dots: Tensor, g_norm: Tensor, z_norm: Tensor, min_cosine: float) -> Tensor:
    """DiverseFL's direction test: ``cos > min_cosine``, or the paper's sign test ``dot > 0``
    when ``min_cosine = 0``."""
    if min_cosine > 0:
        return _cosine(dots, g_norm, z_norm) > min_cosine
    return dots > 0


def layer_direction_pass(
    guiding: Tensor, updates: Tensor, sizes: tuple[int, ...], min_cosine: float
) -> Tensor:
    """Per client: does every layer block of the update point along the guiding gradient's
    block (``cos > min_cosine``; ``min_cosine = 0`` is the sign test ``dot > 0``)? Blocks where
    the guiding gradient is zero carry no direction and are skipped."""
    if sum(sizes) != updates.shape[1]:
        raise AggregatorError(
            f"diversefl: layer sizes sum to {sum(sizes)}, updates have {updates.shape[1]} entries"
        )
    ok = torch.ones(updates.shape[0], dtype=torch.bool, device=updates.device)
    for g, z in zip(guiding.split(sizes, dim=1), updates.split(sizes, dim=1), strict=True):
        dots, g_norm, z_norm = _dots_and_norms(g, z)
        ok &= _direction_ok(dots, g_norm, z_norm, min_cosine) | (g_norm == 0)
    return ok


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
        self.tested = torch.zeros(0, dtype=torch.float64)  # per client id: rounds tested
        self.failed = torch.zeros(0, dtype=torch.float64)  # per client id: rounds failed
        self.round: int | None = None
        self._before: tuple[Tensor, Tensor] | None = None  # counts before `self.round`

    def check(self, n: int, f: int) -> None:
        """DiverseFL's test is per client, so any n >= 1 works (no bound on f)."""
        if n < 1:
            raise AggregatorError(f"diversefl: needs at least one client, got n={n}")

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        guiding = ctx.guiding.to(updates.dtype)
        if guiding.shape != updates.shape:
            raise AggregatorError(
                f"guiding gradients {tuple(guiding.shape)} do not match updates "
                f"{tuple(updates.shape)}"
            )
        dots, g_norm, z_norm = _dots_and_norms(guiding, updates)  # once per round
        c1, c2 = torch.sign(dots), z_norm / g_norm
        scores = {"c1": c1, "c2": c2}
        direction = _direction_ok(dots, g_norm, z_norm, self.min_cosine)
        # Logged for every setting: the honest clients' cosines are what `min_cosine` is
        # chosen from (`diversefl detection --cosines`), so a run of the paper's rule needs them.
        scores["cos"] = _cosine(dots, g_norm, z_norm)
        if self.per_layer:
            if ctx.layer_sizes is None:
                raise AggregatorError(
                    "diversefl: per_layer needs the model's layer sizes (ctx.layer_sizes)"
                )
            layers_ok = layer_direction_pass(guiding, updates, ctx.layer_sizes, self.min_cosine)
            scores["layers_ok"] = layers_ok.to(updates.dtype)
            direction = direction & layers_ok
        passed = direction & (c2 > self.eps1) & (c2 < self.eps2)  # NaN fails
        accepted = passed
        if self.quarantine > 0:
            rate, seen = self._record(
                direction if self.quarantine_on == "direction" else passed, ctx
            )
            scores["fail_rate"] = rate.to(updates.dtype)
            trusted = (seen < self.quarantine_after) | (rate <= self.quarantine)
            accepted = passed & trusted
        if self.clip_to_guide:
            factor = torch.clamp(g_norm / z_norm.clamp_min(torch.finfo(z_norm.dtype).tiny), max=1.0)
            updates = updates * factor.nan_to_num(0.0)[:, None]
        return Aggregate(update=mean_of(updates, accepted), accepted=accepted, scores=scores)

    def _record(self, passed: Tensor, ctx: RoundContext) -> tuple[Tensor, Tensor]:
        """Add this round's test results to the per-client counts; each client's failure rate
        so far and its number of tests. A second call in the same round replaces that round's
        results."""
        if ctx.round == self.round and self._before is not None:
            self.tested, self.failed = (t.clone() for t in self._before)
        else:
            self._before = (self.tested.clone(), self.failed.clone())
            self.round = ctx.round
        ids = ctx.client_ids.cpu().long()
        self._count(ids, (~passed).cpu().double())
        seen = self.tested[ids]
        return (self.failed[ids] / seen).to(passed.device), seen.to(passed.device)

    def _count(self, ids: Tensor, failed: Tensor) -> None:
        """One more test for clients ``ids``, ``failed`` (0/1 per client) of them failed."""
        size = int(ids.max()) + 1 if ids.numel() else 0
        if size > self.tested.numel():
            grow = size - self.tested.numel()
            self.tested = torch.cat([self.tested, torch.zeros(grow, dtype=torch.float64)])
            self.failed = torch.cat([self.failed, torch.zeros(grow, dtype=torch.float64)])
        self.tested[ids] += 1
        self.failed[ids] += failed

    def _aggregate_valid_subset(
        self, updates: Tensor, valid: Tensor, ctx: RoundContext
    ) -> Aggregate:
        """As every rule, on the well-formed rows; with quarantine, a malformed update (NaN,
        infinity, wrong shape) also counts as a failed test, so that a client cannot keep its
        standing by sending garbage in the rounds it would fail."""
        out = super()._aggregate_valid_subset(updates, valid, ctx)
        if self.quarantine > 0:
            if ctx.round != self.round or self._before is None:  # no valid row was recorded
                self._before = (self.tested.clone(), self.failed.clone())
                self.round = ctx.round
            bad = ctx.client_ids[(~valid).nonzero().flatten().to(ctx.client_ids.device)]
            self._count(bad.cpu().long(), torch.ones(bad.numel(), dtype=torch.float64))
        return out

    def state_dict(self) -> dict[str, Any]:
        """The per-client test counts of the quarantine rule."""
        return {"tested": self.tested.clone(), "failed": self.failed.clone(), "round": self.round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counts saved by :meth:`state_dict`."""
        if state:
            self.tested = state["tested"].clone()
            self.failed = state["failed"].clone()
            self.round = state["round"]
            self._before = None
