"""DBA, the distributed backdoor attack (Xie, Huang, Chen & Li, ICLR 2020).

The global trigger is split into ``parts`` local patterns; each Byzantine client trains with
only its own local pattern (Byzantine client number i, its rank among the Byzantine clients by
client id, stamps pattern ``i mod parts``), yet the model learns to answer ``target`` on the
full global trigger, which is what the evaluation stamps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.attacks.triggers import TriggerBackdoor, box_mask


def bar_patterns(height: int, width: int, parts: int, length: int, gap: int, offset: int) -> Tensor:
    """``[parts, height, width]`` bool: horizontal ``1 x length`` bars, two per row of bars,
    ``gap`` pixels apart in both directions, the first at (offset, offset). Bar i sits at row
    ``offset + (i // 2) * (1 + gap)``, column ``offset + (i % 2) * (length + gap)``."""
    hint = "lower parts, length, gap or offset"
    bars = []
    for i in range(parts):
        top, left = offset + (i // 2) * (1 + gap), offset + (i % 2) * (length + gap)
        bars.append(box_mask(height, width, top, left, 1, length, "dba", hint))
    return torch.stack(bars)


@dataclass
class DBA(TriggerBackdoor):
    """The global trigger is ``parts`` bars (default: four 1x4 bars in two rows, 2 pixels
    apart, at the top-left corner, the DBA authors' MNIST layout); Byzantine client number i
    stamps only bar ``i mod parts`` on a seeded ``poison_frac`` of its batch and relabels those
    examples ``target``; it sends its own gradient (times ``scale``). The evaluation stamps the
    whole global trigger: ``main_accuracy`` (clean test accuracy) and ``backdoor_accuracy``
    (share of triggered test images not of class ``target`` classified ``target``). Works on
    images ``[C, H, W]`` and, with ``image_shape``, on flattened images; tables are refused.

    References
    ----------
    C. Xie, K. Huang, P.-Y. Chen, B. Li. "DBA: Distributed Backdoor Attacks against Federated
    Learning", ICLR 2020.
    """

    name: ClassVar[str] = "dba"
    parts: int = 4  # local patterns the global trigger is split into (K)
    length: int = 4  # pixels per bar (the paper's trigger size)
    gap: int = 2  # pixels between neighbouring bars, across and down (the trigger gap)
    offset: int = 0  # row and column of the first bar's first pixel (the trigger location)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, least in (("parts", 1), ("length", 1), ("gap", 0), ("offset", 0)):
            if getattr(self, key) < least:
                raise ValueError(f"dba: {key} must be >= {least}, got {getattr(self, key)}")

    def local_masks(self, height: int, width: int) -> Tensor:
        """The ``parts`` local patterns, ``[parts, H, W]`` bool (disjoint)."""
        return bar_patterns(height, width, self.parts, self.length, self.gap, self.offset)

    def global_mask(self, height: int, width: int) -> Tensor:
        return self.local_masks(height, width).any(0)

    def client_masks(self, rows: int, height: int, width: int) -> Tensor:
        return self.local_masks(height, width)[torch.arange(rows) % self.parts]
