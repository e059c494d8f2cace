"""Learning-rate schedules of the paper, as pure functions of the round number (1-based)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

SCHEDULES = ("constant", "inv_sqrt", "step", "warmup_step")


def make_schedule(
    kind: str,
    lr: float,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_rounds: int = 0,
    warmup_start_lr: float = 0.0,
) -> Callable[[int], float]:
    """Return ``r -> lr_r``.

    - ``constant``: ``lr``.
    - ``inv_sqrt``: ``lr / sqrt(r)`` (softmax regression, Section 4.1).
    - ``step``: ``lr * gamma**k`` after ``k`` milestones passed (MNIST MLP: 0.06, x0.5 at 500, 950).
    - ``warmup_step``: linear from ``warmup_start_lr`` to ``lr`` over ``warmup_rounds``, then
      step decay (CIFAR VGG11: 0.05 -> 0.1 over 1,000 rounds, x0.4 at 2,000).
    """
    ms = sorted(milestones)

    def step_factor(r: int) -> float:
        return gamma ** bisect.bisect_right(ms, r - 1)

    if kind == "constant":
        return lambda r: lr
    if kind == "inv_sqrt":
        return lambda r: lr / math.sqrt(r)
    if kind == "step":
        return lambda r: lr * step_factor(r)
    if kind == "warmup_step":

        def warm(r: int) -> float:
            if warmup_rounds > 0 and r <= warmup_rounds:
                frac = (r - 1) / max(1, warmup_rounds - 1)
                return warmup_start_lr + frac * (lr - warmup_start_lr)
            return lr * step_factor(r)

        return warm
    raise ValueError(f"optim.schedule: unknown schedule {kind!r}; allowed: {', '.join(SCHEDULES)}")
