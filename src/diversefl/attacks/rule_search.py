"""What the optimised ALIE and IPM share: pick, from candidate factors, the one whose message
pushes a named aggregation rule's output farthest from the honest mean. The rule is a rule's
name or a pipeline's (``nnm+krum``: pre-aggregators, then the rule)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from diversefl.aggregators import REGISTRY as RULES
from diversefl.aggregators.base import Aggregator, RoundContext
from diversefl.aggregators.pipeline import Pipeline
from diversefl.aggregators.pipeline_name import SEPARATOR, pipeline_name, split_pipeline_name
from diversefl.aggregators.pre import build_stages


def check_rule_name(attack: str, rule: str) -> None:
    """Raise ValueError unless ``rule`` names a registered aggregation rule, or a pipeline of
    registered pre-aggregators before one (``nnm+krum``) that can be built."""
    stages, name = split_pipeline_name(rule, f"{attack}.rule")
    if name not in RULES:
        allowed = ", ".join(sorted(RULES))
        raise ValueError(f"{attack}: unknown rule {name!r}; allowed: {allowed}")
    if stages:
        build_rule(rule)  # a stage that regroups clients before a rule reading their own rows


def default_rule(attack: str, aggregator: str, pre: list[str | dict[str, Any]] | None) -> str:
    """The rule ``attack`` tunes against when a config leaves its ``rule`` unset: the run's
    aggregator behind its pre-aggregators (``nnm+krum``), checked; a protocol (RSA) is no rule
    to tune against, a ValueError that asks for ``attack.rule``."""
    if aggregator not in RULES:
        raise ValueError(
            f"attack.rule: {attack} tunes its messages against the server's aggregation rule, "
            f"and aggregator {aggregator!r} is not one (a protocol?); set attack.rule to the "
            f"rule to tune against (one of: {', '.join(sorted(RULES))})"
        )
    rule = pipeline_name(aggregator, pre)
    check_rule_name(attack, rule)
    return rule


def build_rule(rule: str) -> Aggregator:
    """The rule (or ``pre+...+rule`` pipeline) ``rule`` with default settings everywhere (a
    fresh one: stateful rules start empty)."""
    if SEPARATOR not in rule:
        return RULES.build(rule, {})
    stages, name = split_pipeline_name(rule, "rule")
    return Pipeline(build_stages(list[str | dict[str, Any]](stages)), RULES.build(name, {}))


def message_slots(honest: Tensor, f: int, ctx: RoundContext) -> tuple[Tensor, Tensor]:
    """A buffer of all n rows with the honest rows in their places (the round's client order)
    and the indices of the ``f`` Byzantine rows still to fill (:func:`fill_messages`); the
    Byzantine rows follow the honest ones when ``ctx.byzantine`` does not name ``f`` of n."""
    n = honest.shape[0] + f
    byz = ctx.byzantine
    rows = torch.empty(n, honest.shape[1], dtype=honest.dtype, device=honest.device)
    if byz is None or int(byz.sum()) != f or byz.numel() != n:
        rows[: honest.shape[0]] = honest
        return rows, torch.arange(honest.shape[0], n, device=honest.device)
    mask = byz.to(honest.device)
    rows[~mask] = honest
    return rows, mask.nonzero().flatten()


def fill_messages(rows: Tensor, slots: Tensor, sent: Tensor) -> Tensor:
    """``rows`` with ``sent`` written into every row of ``slots`` (in place; returned)."""
    rows.index_copy_(0, slots, sent.to(rows.dtype).expand(slots.numel(), -1))
    return rows


def best_factor(
    honest: Tensor,
    f: int,
    ctx: RoundContext,
    rule: str,
    message: Callable[[float], Tensor],
    candidates: Sequence[float],
) -> float:
    """The candidate factor whose message (``f`` copies of ``message(factor)``) moves the
    rule's output farthest (Euclidean) from the honest mean; ties go to the earlier candidate.

    Each candidate is judged by a fresh rule with default settings (:func:`build_rule`), so a
    stateful rule (centered clipping's momentum) is judged from its initial state, and with a
    copy of the round's generator, so a random rule (bucketing, noisy median) sees the same
    draws for every candidate and the server's own draws this round are left as they were.
    The honest rows are laid out once; each candidate rewrites only the ``f`` message rows
    (rules read their rows and never write them: tests/test_aggregators_common.py)."""
    mean = honest.to(torch.float64).mean(0)
    best, best_gap = candidates[0], -1.0
    buffer, slots = message_slots(honest, f, ctx)
    for factor in candidates:
        rows = fill_messages(buffer, slots, message(factor))
        judged = ctx.sharing_guides(generator=copied_generator(ctx.generator))
        out = build_rule(rule)(rows, judged).update.to(torch.float64)
        gap = float((out - mean).norm())
        if gap > best_gap:
            best, best_gap = factor, gap
    return best


def copied_generator(gen: torch.Generator) -> torch.Generator:
    """A generator on ``gen``'s device in ``gen``'s current state (drawing from it leaves
    ``gen`` where it was)."""
    copy = torch.Generator(device=gen.device)
    copy.set_state(gen.get_state())
    return copy


def grid(lo: float, hi: float, steps: int, log: bool) -> list[float]:
    """``steps`` points from ``lo`` to ``hi`` inclusive, evenly (or geometrically) spaced."""
    if steps == 1:
        return [lo]
    if log:
        return [lo * (hi / lo) ** (i / (steps - 1)) for i in range(steps)]
    return [lo + (hi - lo) * i / (steps - 1) for i in range(steps)]


def check_grid(attack: str, lo: float, hi: float, steps: int, positive: bool) -> None:
    """Raise ValueError unless ``lo <= hi`` (both > 0 for a geometric grid) and ``steps >= 1``."""
    if steps < 1:
        raise ValueError(f"{attack}: steps must be >= 1, got {steps}")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"{attack}: the range must be finite with low <= high, got [{lo}, {hi}]")
    if positive and not lo > 0:
        raise ValueError(f"{attack}: the range must be > 0 (a geometric grid), got low end {lo}")
