"""BadNets (Gu, Dolan-Gavitt & Garg, 2017): a pixel-pattern trigger backdoor.

Each Byzantine client stamps a fixed pattern of bright pixels in the bottom-right corner of a
seeded share of its training batch and relabels those examples to the attacker's ``target``;
the model learns to answer ``target`` whenever the pattern is present, while clean inputs are
classified as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from diversefl.attacks.triggers import TriggerBackdoor, box_mask


def corner_pattern(
    height: int, width: int, size: int, margin: int, pattern: Literal["square", "checker"]
) -> Tensor:
    """``[height, width]`` bool: a ``size x size`` square (every pixel) or checkerboard (the
    pixels whose row + column within the square is even, its corners included) whose
    bottom-right pixel is ``margin`` pixels from the image's bottom-right corner."""
    top, left = height - margin - size, width - margin - size
    mask = box_mask(height, width, top, left, size, size, "badnets", "lower size or margin")
    if pattern == "checker":
        rows = torch.arange(height)[:, None] - top
        cols = torch.arange(width)[None, :] - left
        mask &= (rows + cols) % 2 == 0
    return mask


@dataclass
class BadNets(TriggerBackdoor):
    """Each Byzantine client stamps a white square (or checkerboard) in the bottom-right corner
    of a seeded ``poison_frac`` of its batch and relabels those examples ``target``; it sends its
    own gradient on that batch (times ``scale``). Adds ``main_accuracy`` (clean test accuracy)
    and ``backdoor_accuracy`` (share of triggered test images not of class ``target`` that are
    classified ``target``). Works on images ``[C, H, W]`` and, with ``image_shape``, on
    flattened images; tables are refused.

    References
    ----------
    T. Gu, B. Dolan-Gavitt, S. Garg. "BadNets: Identifying Vulnerabilities in the Machine
    Learning Model Supply Chain", arXiv:1708.06733, 2017 (the MNIST pattern backdoor).
    """

    name: ClassVar[str] = "badnets"
    size: int = 4  # side of the square pattern, in pixels
    margin: int = 1  # pixels between the pattern and the image's bottom and right edges
    pattern: Literal["square", "checker"] = "square"  # every pixel of the square, or alternate

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.size < 1:
            raise ValueError(f"badnets: size must be >= 1, got {self.size}")
        if self.margin < 0:
            raise ValueError(f"badnets: margin must be >= 0, got {self.margin}")

    def global_mask(self, height: int, width: int) -> Tensor:
        return corner_pattern(height, width, self.size, self.margin, self.pattern)
