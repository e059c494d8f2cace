"""Pixel triggers for the trigger backdoors (BadNets, DBA): trigger masks on an image grid,
stamping them onto image or flattened-image batches, which examples a Byzantine client poisons,
the attack-success rate, and the settings and poisoning the two attacks share."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import RoundContext
from diversefl.attacks.base import Attack

ImageShape = tuple[int, int, int]  # (C, H, W)


def parse_image_shape(text: str, who: str) -> ImageShape | None:
    """``"CxHxW"`` (or ``"HxW"``, one channel) as (C, H, W); ``""`` is None (the examples'
    own shape)."""
    if text == "":
        return None
    parts = text.lower().split("x")
    if len(parts) not in (2, 3) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(
            f"{who}: image_shape must be 'CxHxW' or 'HxW' with positive integers "
            f"(e.g. '1x28x28'), got {text!r}"
        )
    dims = [int(p) for p in parts]
    c, h, w = dims if len(dims) == 3 else [1, *dims]
    return c, h, w


def _text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def image_dims(example: tuple[int, ...], given: ImageShape | None, who: str) -> ImageShape:
    """(C, H, W) of one example of shape ``example``: an image ``[C, H, W]`` (or ``[H, W]``) is
    its own shape; a flat vector needs ``given`` (C*H*W entries). A flat vector without it is
    refused: a table's features have no pixel grid to stamp a trigger on."""
    if len(example) in (2, 3):
        own = (1, *example) if len(example) == 2 else example
        if given is not None and given != own:
            raise ValueError(
                f"{who}: image_shape {_text(given)} does not match the images' {_text(own)}"
            )
        return own[0], own[1], own[2]
    if len(example) == 1 and given is not None:
        if math.prod(given) != example[0]:
            raise ValueError(
                f"{who}: image_shape {_text(given)} has {math.prod(given)} "
                f"pixels, but the examples are flat vectors of {example[0]} features"
            )
        return given
    if len(example) == 1:
        raise ValueError(
            f"{who}: the examples are flat vectors of {example[0]} features (a table?), with "
            "no pixel grid for a trigger; for flattened images set attack.image_shape = "
            "'CxHxW' (e.g. '1x28x28')"
        )
    raise ValueError(f"{who}: examples of shape {example} are not images [C, H, W]")


def box_mask(
    height: int, width: int, top: int, left: int, rows: int, cols: int, who: str, hint: str
) -> Tensor:
    """``[height, width]`` bool mask that is True on the ``rows x cols`` box at (top, left);
    a box that does not fit is an error naming ``who`` and ending with ``hint``."""
    if top < 0 or left < 0 or top + rows > height or left + cols > width:
        raise ValueError(
            f"{who}: a {rows}x{cols} trigger block at row {top}, column {left} does not fit in "
            f"{height}x{width} images; {hint}"
        )
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[top : top + rows, left : left + cols] = True
    return mask


def stamp(x: Tensor, mask: Tensor, value: float, lead: int, shape: ImageShape) -> Tensor:
    """``x`` (``lead`` batch dims, then one image ``[C, H, W]`` or its flattened form) with
    ``value`` written in every channel where ``mask`` is True. ``mask`` is ``[H, W]`` or
    broadcasts to ``[*x.shape[:lead], H, W]``; ``x`` is not modified."""
    images = x.reshape(*x.shape[:lead], *shape)
    where = mask.to(x.device).unsqueeze(-3)  # the same pixels in every channel
    fill = torch.tensor(value, dtype=x.dtype, device=x.device)
    return torch.where(where, fill, images).reshape(x.shape)


def poisoned_examples(shape: torch.Size, frac: float, gen: torch.Generator) -> Tensor:
    """Bool ``shape`` (``[f, m]``): each example poisoned with probability ``frac``, drawn
    from ``gen``; row i depends only on row i of one ``shape`` uniform draw."""
    return torch.rand(shape, generator=gen) < frac


def attack_success_rate(preds: Tensor, labels: Tensor, target: int) -> float:
    """Share of the test examples whose true label is not ``target`` that are classified as
    ``target`` (the predictions are on their triggered copies); NaN when there are none."""
    other = labels != target
    eligible = int(other.sum())
    return int((preds[other] == target).sum()) / eligible if eligible else math.nan


@dataclass
class TriggerBackdoor(Attack, ABC):
    """Shared by BadNets and DBA: each Byzantine client stamps its trigger on a seeded
    ``poison_frac`` of its batch, relabels those examples ``target``, and sends its own
    gradient times ``scale``. Subclasses say which pixels: :meth:`global_mask` (the full
    trigger, used at evaluation) and :meth:`client_masks` (the one each Byzantine row stamps).
    """

    name: ClassVar[str] = "trigger_backdoor"
    metric_names: ClassVar[tuple[str, ...]] = ("main_accuracy", "backdoor_accuracy")
    target: int = 0  # label the triggered examples are relabelled to
    poison_frac: float = 0.5  # share of a Byzantine batch that is triggered (each example)
    scale: float = 1.0  # boost of the Byzantine update (1: the plain gradient)
    value: float = 1.0  # trigger pixel value in the model's input units (1.0: white MNIST pixel)
    # "CxHxW" of flattened images (e.g. "1x28x28"); "" for image inputs [C, H, W]
    image_shape: str = ""

    def __post_init__(self) -> None:
        who = self.name
        if self.target < 0:
            raise ValueError(f"{who}: target must be a class index >= 0, got {self.target}")
        if not 0.0 < self.poison_frac <= 1.0:
            raise ValueError(f"{who}: poison_frac must be in (0, 1], got {self.poison_frac}")
        for key in ("scale", "value"):
            if not math.isfinite(getattr(self, key)):
                raise ValueError(f"{who}: {key} must be finite, got {getattr(self, key)}")
        parse_image_shape(self.image_shape, who)

    @abstractmethod
    def global_mask(self, height: int, width: int) -> Tensor:
        """The full trigger, ``[H, W]`` bool."""

    def dims(self, example: tuple[int, ...]) -> ImageShape:
        """(C, H, W) of one example of shape ``example`` (see :func:`image_dims`)."""
        return image_dims(example, parse_image_shape(self.image_shape, self.name), self.name)

    def client_masks(self, rows: int, height: int, width: int) -> Tensor:
        """``[rows, H, W]`` bool: the pixels Byzantine row i (its rank by client id) stamps."""
        return self.global_mask(height, width).expand(rows, height, width)

    def poison(self, x: Tensor, y: Tensor, ctx: RoundContext) -> tuple[Tensor, Tensor]:
        if ctx.num_classes is not None and self.target >= ctx.num_classes:
            raise ValueError(
                f"{self.name}: target {self.target} is not a class (0..{ctx.num_classes - 1})"
            )
        c, h, w = self.dims(tuple(x.shape[2:]))
        chosen = poisoned_examples(y.shape, self.poison_frac, ctx.generator).to(y.device)
        own = self.client_masks(x.shape[0], h, w).to(y.device)
        masks = chosen[:, :, None, None] & own[:, None]  # [f, m, H, W]
        x = stamp(x, masks, self.value, 2, (c, h, w))
        return x, torch.where(chosen, torch.full_like(y, self.target), y)

    def __call__(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        return self.scale * byzantine

    def trigger(self, x: Tensor) -> Tensor:
        c, h, w = self.dims(tuple(x.shape[1:]))
        return stamp(x, self.global_mask(h, w), self.value, 1, (c, h, w))

    def metrics(self, preds: Tensor, labels: Tensor) -> dict[str, float]:
        """``main_accuracy``: accuracy on the clean test set."""
        return {"main_accuracy": float((preds == labels).float().mean())}

    def trigger_metrics(self, preds: Tensor, labels: Tensor) -> dict[str, float]:
        """``backdoor_accuracy``: the attack-success rate on the triggered test set."""
        return {"backdoor_accuracy": attack_success_rate(preds, labels, self.target)}
