"""What the optimised ALIE and IPM share: pick, from candidate factors, the one whose message
pushes a named aggregation rule's output farthest from the honest mean."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diversefl.aggregators import REGISTRY as RULES
from diversefl.aggregators.base import Aggregator, RoundContext


def check_rule_name(attack: str, rule: str) -> None:
    """Raise ValueError unless ``rule`` names a registered aggregation rule."""
    if rule not in RULES:
        allowed = ", ".join(sorted(RULES))
        raise ValueError(f"{attack}: unknown rule {rule!r}; allowed: {allowed}")


def build_rule(rule: str) -> Aggregator:
    """The rule ``rule`` with its default settings (a fresh one: stateful rules start empty)."""
    return RULES.build(rule, {})


def with_messages(honest: Tensor, sent: Tensor, f: int, ctx: RoundContext) -> Tensor:
    """All n rows in the round's client order: the honest rows, and ``f`` copies of ``sent`` at
    the Byzantine positions of ``ctx.byzantine`` (after the honest rows when it is unknown)."""
    copies = sent.to(honest.dtype).expand(f, -1)
    byz = ctx.byzantine
    if byz is None or int(byz.sum()) != f or byz.numel() != honest.shape[0] + f:
        return torch.cat([honest, copies])
    rows = torch.empty(byz.numel(), honest.shape[1], dtype=honest.dtype, device=honest.device)
    mask = byz.to(honest.device)
    rows[~mask] = honest
    rows[mask] = copies
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
    stateful rule (centered clipping's momentum) is judged from its initial state."""
    mean = honest.to(torch.float64).mean(0)
    best, best_gap = candidates[0], -1.0
    for factor in candidates:
        rows = with_messages(honest, message(factor), f, ctx)
        out = build_rule(rule)(rows, ctx).update.to(torch.float64)
        gap = float((out - mean).norm())
        if gap > best_gap:
            best, best_gap = factor, gap
    return best


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
