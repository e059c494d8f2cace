"""Byzantine attacks, one file each, looked up by name."""

from __future__ import annotations

from typing import Any

from diversefl.attacks.adaptive import AdaptiveDiverseFL
from diversefl.attacks.alie import ALIE
from diversefl.attacks.alie_opt import ALIEOptimised
from diversefl.attacks.backdoor import Backdoor
from diversefl.attacks.badnets import BadNets
from diversefl.attacks.base import Attack
from diversefl.attacks.dba import DBA
from diversefl.attacks.fang import FangKrum, FangTrimmedMean
from diversefl.attacks.gaussian import Gaussian
from diversefl.attacks.inf import Inf
from diversefl.attacks.ipm import IPM
from diversefl.attacks.ipm_opt import IPMOptimised
from diversefl.attacks.label_flip import LabelFlip
from diversefl.attacks.mimic import Mimic
from diversefl.attacks.min_max import MinMax
from diversefl.attacks.min_sum import MinSum
from diversefl.attacks.none import NoAttack
from diversefl.attacks.same_value import SameValue
from diversefl.attacks.sign_flip import SignFlip
from diversefl.registry import Registry

REGISTRY: Registry[type[Attack]] = Registry(
    "attack",
    {
        "none": NoAttack,
        "gaussian": Gaussian,
        "sign_flip": SignFlip,
        "same_value": SameValue,
        "label_flip": LabelFlip,
        "backdoor": Backdoor,
        "alie": ALIE,
        "ipm": IPM,
        "min_max": MinMax,
        "min_sum": MinSum,
        "adaptive": AdaptiveDiverseFL,
        "inf": Inf,
        "mimic": Mimic,
        "fang_krum": FangKrum,
        "fang_trmean": FangTrimmedMean,
        "alie_opt": ALIEOptimised,
        "ipm_opt": IPMOptimised,
        "badnets": BadNets,
        "dba": DBA,
    },
)


def get(name: str, **params: Any) -> Attack:
    """Build the attack called ``name`` with its settings (unknown keys are an error)."""
    return REGISTRY.build(name, params)


__all__ = ["REGISTRY", "Attack", "get"]
