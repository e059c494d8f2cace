"""Learning-rate schedules of the paper, as pure functions of the round number (1-based)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

from diversefl.registry import Registry

Schedule = Callable[[int], float]


def constant(lr: float, **_: object) -> Schedule:
    """``lr`` every round."""
    return lambda r: lr


def inv_sqrt(lr: float, **_: object) -> Schedule:
    """``lr / sqrt(r)`` (softmax regression, Section 4.1)."""
    return lambda r: lr / math.sqrt(r)


def _step_factor(milestones: Sequence[int], gamma: float) -> Schedule:
    ms = sorted(milestones)
    return lambda r: gamma ** bisect.bisect_right(ms, r - 1)


def step(lr: float, milestones: Sequence[int] = (), gamma: float = 0.1, **_: object) -> Schedule:
    """``lr * gamma**k`` after ``k`` milestones passed (MNIST MLP: 0.06, x0.5 at 500, 950)."""
    factor = _step_factor(milestones, gamma)
    return lambda r: lr * factor(r)


def warmup_step(
    lr: float,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_rounds: int = 0,
    warmup_start_lr: float = 0.0,
) -> Schedule:
    """Linear from ``warmup_start_lr`` to ``lr`` over ``warmup_rounds``, then step decay
    (CIFAR VGG11: 0.05 -> 0.1 over 1,000 rounds, x0.4 at 2,000)."""
    factor = _step_factor(milestones, gamma)

    def warm(r: int) -> float:
        if warmup_rounds > 0 and r <= warmup_rounds:
            frac = (r - 1) / max(1, warmup_rounds - 1)
            return warmup_start_lr + frac * (lr - warmup_start_lr)
        return lr * factor(r)

    return warm


#: name -> factory ``(lr, milestones, gamma, warmup_rounds, warmup_start_lr) -> (r -> lr_r)``
SCHEDULES: Registry[Callable[..., Schedule]] = Registry(
    "schedule",
    {"constant": constant, "inv_sqrt": inv_sqrt, "step": step, "warmup_step": warmup_step},
)


def make_schedule(
    kind: str,
    lr: float,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_rounds: int = 0,
    warmup_start_lr: float = 0.0,
) -> Schedule:
    """Return ``r -> lr_r`` for the registered schedule ``kind`` (see each factory)."""
    factory = SCHEDULES.lookup(kind, "optim.schedule")
    return factory(
        lr,
        milestones=milestones,
        gamma=gamma,
        warmup_rounds=warmup_rounds,
        warmup_start_lr=warmup_start_lr,
    )
