"""No attack: every client is honest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from diversefl.attacks.base import Attack


@dataclass
class NoAttack(Attack):
    """Every client sends its true gradient; a run with it has no Byzantine clients."""

    name: ClassVar[str] = "none"
