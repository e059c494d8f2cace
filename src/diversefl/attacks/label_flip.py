"""Label-flip attack (paper Section 4.1): Byzantine clients train on flipped labels.

The paper writes ``c -> c_n - c``; with labels ``0..c_n-1`` that maps 0 to c_n, which is not a
class, so we use ``c -> c_n - 1 - c`` (0 <-> 9, 1 <-> 8, ... on MNIST). The server's one-time
sample holds the client's true data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from diversefl.aggregators.base import RoundContext
from diversefl.attacks.base import Attack


@dataclass
class LabelFlip(Attack):
    """Relabel every example of a Byzantine client's batch ``c -> num_classes - 1 - c``."""

    name: ClassVar[str] = "label_flip"
    # poison() changes labels only, so packed runs share the inputs (engine/packed.py)
    poisons_labels_only: ClassVar[bool] = True

    def poison(self, x: Tensor, y: Tensor, ctx: RoundContext) -> tuple[Tensor, Tensor]:
        if ctx.num_classes is None:
            raise ValueError("label_flip: the round context does not say how many classes")
        num_classes = int(ctx.num_classes)
        return x, num_classes - 1 - y
