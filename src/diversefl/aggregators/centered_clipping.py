"""Centered clipping (Karimireddy, He & Jaggi, ICML 2021): average the updates after clipping
each one to a ball around a reference point carried over from earlier rounds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, AggregatorError, RoundContext


def centered_clip(updates: Tensor, v: Tensor, tau: float, iters: int) -> tuple[Tensor, Tensor]:
    """``iters`` steps of ``v <- v + mean_i clip_tau(z_i - v)``, ``clip_tau(x) = x min(1,
    tau / |x|)``. Returns the final ``v [d]`` and which rows were clipped in the last step."""
    clipped = torch.zeros(updates.shape[0], dtype=torch.bool, device=updates.device)
    for _ in range(iters):
        diff = updates - v[None, :]
        norm = diff.norm(dim=1)
        clipped = norm > tau
        factor = torch.where(clipped, tau / norm.clamp_min(torch.finfo(norm.dtype).tiny), 1.0)
        v = v + (factor[:, None] * diff).mean(0)
    return v, clipped


@dataclass
class CenteredClipping(Aggregator):
    """Centered clipping: ``v <- v + (1/n) sum_i clip_tau(z_i - v)``, repeated ``iters`` times.

    Reference point. In the paper the workers send momenta and the clipping starts from the
    previous round's aggregate (of momenta). Here the clients send plain gradients, so the
    server keeps the matching quantity itself: ``momentum``, an exponential moving average of
    its past aggregates, ``m <- beta * m + (1 - beta) * v_out`` (``m`` is set to the first
    round's output; ``beta = 0`` starts every round from the previous aggregate). Round 1 starts
    from zero. Calling the rule again within the same round (``ctx.round`` unchanged) restarts
    from that round's reference instead of compounding, so a round is a function of its updates.
    The state (``momentum``, the round's start point and the round number) travels through
    :meth:`state_dict` / :meth:`load_state_dict`.

    ``accepted`` is all True (a clipped update still contributes); scores
    ``{"clipped": 1.0 where a row was clipped in the last iteration, else 0.0}``.

    References
    ----------
    S. P. Karimireddy, L. He, M. Jaggi. "Learning from History for Byzantine Robust
    Optimization", ICML 2021 (Algorithm 2, centered clipping).
    """

    name: ClassVar[str] = "centered_clipping"
    tau: float = 10.0  # clipping radius around the reference point
    iters: int = 1  # clipping iterations per round (paper: 1 suffices with momentum)
    beta: float = 0.9  # momentum of the reference point (EMA of past aggregates; paper: 0.9)

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise AggregatorError(f"{self.name}: tau must be > 0, got {self.tau}")
        if self.iters < 1:
            raise AggregatorError(f"{self.name}: iters must be >= 1, got {self.iters}")
        if not 0 <= self.beta < 1:
            raise AggregatorError(f"{self.name}: beta must be in [0, 1), got {self.beta}")
        self.momentum: Tensor | None = None  # EMA of aggregates up to round `self.round`
        self.start: Tensor | None = None  # the momentum before round `self.round`
        self.round: int | None = None

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        before = self.start if ctx.round == self.round else self.momentum
        if before is not None and before.shape != updates.shape[1:]:
            raise AggregatorError(
                f"{self.name}: saved reference has shape {tuple(before.shape)}, updates have "
                f"{updates.shape[1]} entries"
            )
        if before is None:
            v0 = torch.zeros(updates.shape[1], dtype=updates.dtype, device=updates.device)
        else:
            v0 = before.to(device=updates.device, dtype=updates.dtype)
        out, clipped = centered_clip(updates, v0, self.tau, self.iters)
        self.start, self.round = before, ctx.round
        self.momentum = out.clone() if before is None else self.beta * v0 + (1 - self.beta) * out
        accepted = torch.ones(updates.shape[0], dtype=torch.bool, device=updates.device)
        return Aggregate(update=out, accepted=accepted, scores={"clipped": clipped.to(out.dtype)})

    def state_dict(self) -> dict[str, Any]:
        """The reference-point momentum, the round's start point and the round (None at first)."""
        cpu = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
        return {"momentum": cpu(self.momentum), "start": cpu(self.start), "round": self.round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.momentum = state["momentum"]
        self.start = state["start"]
        self.round = state["round"]
