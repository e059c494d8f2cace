"""A rule behind pre-aggregators (``aggregator.pre``): the stages transform the stacked updates
in order, the rule aggregates what comes out, and the clients the rule accepted are those
whose rows make up an accepted output row. Named like ``nnm+krum``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, AggregatorError
from diversefl.aggregators.pre import PreAggregator
from diversefl.round import RoundContext


def members_after(stages: list[PreAggregator], updates: Tensor, ctx: RoundContext):  # noqa: ANN201
    """Run the stages: the rows out ``[m, d]`` and which input rows make each of them
    ``[m, k]``."""
    k = updates.shape[0]
    members = torch.eye(k, dtype=torch.bool, device=updates.device)
    x = updates
    for stage in stages:
        x, step = stage(x, ctx)
        members = (step.float() @ members.float()) > 0
    return x, members


@dataclass
class Pipeline(Aggregator):
    """Pre-aggregators, then a rule (see the module docstring)."""

    stages: list[PreAggregator] = field(default_factory=list)
    rule: Aggregator = field(default_factory=Aggregator)

    def __post_init__(self) -> None:
        self.name = "+".join([*(s.name for s in self.stages), self.rule.name])  # type: ignore[misc]
        self.needs_guiding = self.rule.needs_guiding  # type: ignore[misc]
        regroups = [s.name for s in self.stages if not s.keeps_rows]
        reads_own = self.rule.needs_guiding or self.rule.name in ("oracle",)
        # a rule with per-client history (FoolsGold, FLDetector) would key it by group, and
        # the groups are drawn anew every round: its history would mix different clients
        keeps_history = getattr(self.rule, "keeps_client_history", False)
        if regroups and (reads_own or keeps_history):
            need = (
                "keeps a history per client"
                if keeps_history and not reads_own
                else ("needs each client's own row")
            )
            raise AggregatorError(
                f"aggregator.pre: {regroups[0]} turns clients into groups, but "
                f"{self.rule.name!r} {need}; put it without {regroups[0]}"
            )

    def _rows(self, n: int) -> int:
        for stage in self.stages:
            n = stage.out_rows(n)
        return n

    def check(self, n: int, f: int) -> None:
        rows = n
        for stage in self.stages:
            try:
                stage.check(rows, f)
            except ValueError as err:
                raise AggregatorError(str(err)) from None
            rows = stage.out_rows(rows)
        self.rule.check(rows, f)

    def prepare(self, grads: Tensor, ctx: RoundContext) -> Tensor:
        return self.rule.prepare(grads, ctx)

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        x, members = members_after(self.stages, updates, ctx)
        same_rows = all(s.keeps_rows for s in self.stages)
        inner_ctx = ctx if same_rows else dataclasses.replace(
            ctx, n=x.shape[0], client_ids=None, byzantine=None, guiding_fn=None
        )  # fmt: skip
        out = self.rule(x, inner_ctx)
        accepted = (members.float().T @ out.accepted.float()) > 0
        return Aggregate(out.update, accepted, out.scores if same_rows else {})

    def state_dict(self) -> dict[str, Any]:
        return self.rule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rule.load_state_dict(state)
