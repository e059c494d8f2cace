"""The server's half of one round, shared by the simulator and the Flower server: aggregate the
stacked updates with the rule, then step the model with L2 regularisation (optionally through
heavy-ball momentum on the aggregate, whose buffer is checkpointed with the run)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from diversefl.round import Aggregate, RoundContext, RoundRecord

Rule = Callable[[Tensor, RoundContext], Aggregate]


def heavy_ball(velocity: Tensor | None, update: Tensor, beta: float) -> Tensor:
    """The new momentum buffer ``beta * velocity + update`` (``update`` itself before the
    first round, when there is no buffer yet: v_0 = 0)."""
    return update.clone() if velocity is None else beta * velocity + update


class ServerMomentum:
    """Heavy-ball momentum on the aggregate (``optim.server_momentum`` = beta > 0): the server
    steps with ``v_r = beta v_{r-1} + aggregate_r`` instead of the aggregate; weight decay is
    still added on the current model. The buffer is the run's state, saved in checkpoints."""

    def __init__(self, beta: float) -> None:
        if not 0 < beta < 1:
            raise ValueError(f"server momentum must lie in (0, 1), got {beta}")
        self.beta = beta
        self.velocity: Tensor | None = None

    def __call__(self, update: Tensor) -> Tensor:
        """Fold one round's aggregate into the buffer and return the buffer."""
        self.velocity = heavy_ball(self.velocity, update, self.beta)
        return self.velocity

    def state_dict(self) -> dict[str, Any]:
        """The buffer on the CPU (None before the first round)."""
        return {"velocity": None if self.velocity is None else self.velocity.detach().cpu()}

    def load_state_dict(self, state: Any, like: Tensor) -> None:
        """Restore :meth:`state_dict`; the buffer must be a finite tensor shaped like the model
        ``like`` (and goes to its device and dtype), else ValueError."""
        v = state.get("velocity") if isinstance(state, dict) else state
        if v is not None and (
            not isinstance(v, Tensor) or v.shape != like.shape or not bool(torch.isfinite(v).all())
        ):
            raise ValueError(f"server momentum buffer must be a finite {tuple(like.shape)} tensor")
        self.velocity = None if v is None else v.to(device=like.device, dtype=like.dtype)


def make_momentum(beta: float) -> ServerMomentum | None:
    """The momentum state for ``optim.server_momentum`` = beta, or None for the plain step."""
    return ServerMomentum(beta) if beta > 0 else None


def server_step(
    theta: Tensor,
    rule: Rule,
    updates: Tensor,
    ctx: RoundContext,
    lr: float,
    weight_decay: float,
    momentum: ServerMomentum | None = None,
) -> tuple[Tensor, RoundRecord]:
    """``theta <- theta - lr * (rule(updates) + weight_decay * theta)`` (eq. 11), with the
    aggregate replaced by the momentum buffer when ``momentum`` is given, and the round's
    record (who was Byzantine per ``ctx``, who the rule accepted, its scores)."""
    agg = rule(updates, ctx)
    step = agg.update if momentum is None else momentum(agg.update)
    theta = theta - lr * (step + weight_decay * theta)
    byzantine = ctx.byzantine if ctx.byzantine is not None else torch.zeros(ctx.n, dtype=torch.bool)
    return theta, RoundRecord(
        round=ctx.round,
        lr=lr,
        byzantine=byzantine.cpu(),
        accepted=agg.accepted.cpu(),
        scores={k: v.detach().cpu() for k, v in agg.scores.items()},
    )
