"""The server's half of one FedSGD round, shared by the simulator and the Flower server:
aggregate the stacked updates with the rule, then step the model with L2 regularisation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diversefl.round import Aggregate, RoundContext, RoundRecord

Rule = Callable[[Tensor, RoundContext], Aggregate]


def server_step(
    theta: Tensor, rule: Rule, updates: Tensor, ctx: RoundContext, lr: float, weight_decay: float
) -> tuple[Tensor, RoundRecord]:
    """``theta <- theta - lr * (rule(updates) + weight_decay * theta)`` (eq. 11), and the
    round's record (who was Byzantine per ``ctx``, who the rule accepted, its scores)."""
    agg = rule(updates, ctx)
    theta = theta - lr * (agg.update + weight_decay * theta)
    byzantine = ctx.byzantine if ctx.byzantine is not None else torch.zeros(ctx.n, dtype=torch.bool)
    return theta, RoundRecord(
        round=ctx.round,
        lr=lr,
        byzantine=byzantine.cpu(),
        accepted=agg.accepted.cpu(),
        scores={k: v.detach().cpu() for k, v in agg.scores.items()},
    )
