"""The attack contract. Message attacks replace what Byzantine clients send, seeing what an
omniscient adversary would (every honest gradient); data attacks poison the Byzantine
clients' training batches before their gradients are computed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from torch import Tensor

from diversefl.aggregators.base import RoundContext


@dataclass
class Attack:
    """Base class: subclasses are dataclasses whose fields are the attack's settings."""

    name: ClassVar[str] = "base"
    # Extra per-evaluation metrics this attack defines (e.g. the backdoor's success rate).
    metric_names: ClassVar[tuple[str, ...]] = ()
    # Whether __call__ reads the values of the gradients the Byzantine clients computed. An
    # attack that only looks at the honest ones (and the round context) sets False, and the
    # simulator then skips computing the Byzantine clients' gradients (f/n of a round's work).
    # A subclass that overrides __call__ without setting it is back at True (the safe value).
    uses_own_gradients: ClassVar[bool] = True
    # Whether __call__ reads the honest gradients. An attack built from its own gradient or
    # from noise alone (sign flip, Gaussian) sets False, and the simulator then passes an empty
    # ``[0, d]`` tensor instead of copying the honest rows out (at 1,000 softmax clients that
    # copy was a tenth of a round). Overriding __call__ without setting it means True.
    uses_honest_gradients: ClassVar[bool] = False
    # Whether the message is built from the other clients' updates (their mean and spread),
    # beyond the mean a node could stand in for with its own gradient: a deployed node sees
    # only its own gradient, with which such an attack sends that gradient unchanged, so the
    # Flower deployment refuses it.
    needs_other_clients: ClassVar[bool] = False
    # Whether the message is built from the Byzantine clients' guiding gradients
    # (``ctx.guiding``): a deployed node computes its own on the sample it shared.
    reads_guiding: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__ and "uses_own_gradients" not in cls.__dict__:
            cls.uses_own_gradients = True
        if "__call__" in cls.__dict__ and "uses_honest_gradients" not in cls.__dict__:
            cls.uses_honest_gradients = True

    def choose_byzantine(self, labels: np.ndarray, parts: list[np.ndarray]) -> list[int] | None:
        """Clients this attack makes Byzantine given the partition, or None to use the config's
        ``attack.f`` / ``attack.byzantine`` (the backdoor picks the source-class owners)."""
        return None

    def metrics(self, preds: Tensor, labels: Tensor) -> dict[str, float]:
        """Attack-specific metrics from test-set predictions (see ``metric_names``)."""
        return {}

    def trigger(self, x: Tensor) -> Tensor | None:
        """The test inputs ``x [N, ...]`` stamped with the attack's full trigger, which the
        evaluation runs a second test pass on; None (the default) for attacks without one."""
        return None

    def trigger_metrics(self, preds: Tensor, labels: Tensor) -> dict[str, float]:
        """Attack-specific metrics from the predictions on the triggered test inputs
        (:meth:`trigger`) and their true labels (their names are in ``metric_names`` too)."""
        return {}

    def poison(self, x: Tensor, y: Tensor, ctx: RoundContext) -> tuple[Tensor, Tensor]:
        """Transform the Byzantine clients' batches ``x [f, m, ...]``, ``y [f, m]``."""
        return x, y

    def __call__(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        """Return what the Byzantine clients send, ``[f, d]``, given the honest gradients
        ``[n - f, d]`` and the gradients the Byzantine clients computed themselves ``[f, d]``."""
        return byzantine
