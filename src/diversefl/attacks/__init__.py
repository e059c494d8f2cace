"""Byzantine attacks, one file each, looked up by name."""

from __future__ import annotations

from typing import Any

from diversefl.attacks.backdoor import Backdoor
from diversefl.attacks.base import Attack
from diversefl.attacks.gaussian import Gaussian
from diversefl.attacks.label_flip import LabelFlip
from diversefl.attacks.none import NoAttack
from diversefl.attacks.same_value import SameValue
from diversefl.attacks.sign_flip import SignFlip
from diversefl.registry import build

REGISTRY: dict[str, type[Attack]] = {
    "none": NoAttack,
    "gaussian": Gaussian,
    "sign_flip": SignFlip,
    "same_value": SameValue,
    "label_flip": LabelFlip,
    "backdoor": Backdoor,
}


def get(name: str, **params: Any) -> Attack:
    """Build the attack called ``name`` with its settings (unknown keys are an error)."""
    return build(REGISTRY, "attack", name, params)


__all__ = ["REGISTRY", "Attack", "get"]
