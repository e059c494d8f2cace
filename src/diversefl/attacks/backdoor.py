"""Backdoor by model replacement (Bagdasaryan et al., AISTATS 2020), as the paper uses it.

Every client that owns images of the ``source`` class is Byzantine. Such a client trains on its
normal mini-batch with every source-class image relabelled ``target`` (with the "two-class"
partition about half its data is main-task data, so the main task is not hurt), then scales
its update by ``scale`` (paper: 7) so that averaging does not cancel it. The server's one-time
sample holds the client's true data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from diversefl.aggregators.base import RoundContext
from diversefl.attacks.base import Attack


def backdoor_metrics(preds: Tensor, labels: Tensor, source: int, target: int) -> dict[str, float]:
    """``main_accuracy``: accuracy on every test image not of the source class;
    ``backdoor_accuracy``: share of source-class test images classified as ``target``."""
    is_source = labels == source
    main = (preds[~is_source] == labels[~is_source]).float().mean()
    hit = (preds[is_source] == target).float().mean() if bool(is_source.any()) else torch.nan
    return {"main_accuracy": float(main), "backdoor_accuracy": float(hit)}


@dataclass
class Backdoor(Attack):
    """Relabel source -> target in the Byzantine batches, then scale the update."""

    name: ClassVar[str] = "backdoor"
    uses_honest_gradients: ClassVar[bool] = False
    metric_names: ClassVar[tuple[str, ...]] = ("main_accuracy", "backdoor_accuracy")
    # poison() changes labels only, so packed runs share the inputs (engine/packed.py)
    poisons_labels_only: ClassVar[bool] = True
    source: int = 3  # backdoor class (MNIST: 3; CIFAR-10: 6 = frog)
    target: int = 4  # label the attacker wants for it (MNIST: 4; CIFAR-10: 8 = ship)
    scale: float = 7.0  # model-replacement boost of the update (paper: 7)

    def __post_init__(self) -> None:
        if self.source == self.target:
            raise ValueError(f"source and target must differ, both are {self.source}")

    def choose_byzantine(self, labels: np.ndarray, parts: list[np.ndarray]) -> list[int]:
        """Exactly the clients holding at least one source-class training image."""
        return [j for j, p in enumerate(parts) if bool((labels[p] == self.source).any())]

    def poison(self, x: Tensor, y: Tensor, ctx: RoundContext) -> tuple[Tensor, Tensor]:
        return x, torch.where(y == self.source, torch.full_like(y, self.target), y)

    def __call__(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        return self.scale * byzantine

    def metrics(self, preds: Tensor, labels: Tensor) -> dict[str, float]:
        return backdoor_metrics(preds, labels, self.source, self.target)
