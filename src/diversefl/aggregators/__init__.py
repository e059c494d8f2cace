"""Aggregation rules, one file each, looked up by name.

>>> from diversefl import aggregators
>>> agg = aggregators.get("mean")  # or aggregators.REGISTRY.build("mean", {})
>>> result = agg(updates, aggregators.RoundContext(round=1, n=updates.shape[0], f=0,
...              generator=torch.Generator()))
"""

from __future__ import annotations

from typing import Any

from diversefl.aggregators.base import (
    Aggregate,
    Aggregator,
    AggregatorError,
    RoundContext,
    sanitize,
    settings,
)
from diversefl.aggregators.bulyan import Bulyan
from diversefl.aggregators.caf import CAF
from diversefl.aggregators.centered_clipping import CenteredClipping
from diversefl.aggregators.diversefl import DiverseFL
from diversefl.aggregators.dnc import DnC
from diversefl.aggregators.flame import FLAME
from diversefl.aggregators.fldetector import FLDetector
from diversefl.aggregators.fltrust import FLTrust
from diversefl.aggregators.foolsgold import FoolsGold
from diversefl.aggregators.geomed import GeoMed
from diversefl.aggregators.krum import Krum, MultiKrum
from diversefl.aggregators.mda import MDA
from diversefl.aggregators.meamed import Meamed
from diversefl.aggregators.mean import Mean
from diversefl.aggregators.median import Median
from diversefl.aggregators.monna import MoNNA
from diversefl.aggregators.noisy_median import NoisyMedian
from diversefl.aggregators.oracle import Oracle
from diversefl.aggregators.signguard import SignGuard
from diversefl.aggregators.smea import SMEA
from diversefl.aggregators.trimmed_mean import TrimmedMean, TrimmedMeanGuerraoui, TrimmedMeanXie
from diversefl.registry import Registry

REGISTRY: Registry[type[Aggregator]] = Registry(
    "aggregator",
    {
        "mean": Mean,
        "oracle": Oracle,
        "krum": Krum,
        "multi_krum": MultiKrum,
        "bulyan": Bulyan,
        "median": Median,
        "noisy_median": NoisyMedian,
        "trimmed_mean": TrimmedMean,
        "trimmed_mean_xie": TrimmedMeanXie,
        "trimmed_mean_guerraoui": TrimmedMeanGuerraoui,
        "diversefl": DiverseFL,
        "fltrust": FLTrust,
        "geomed": GeoMed,
        "centered_clipping": CenteredClipping,
        "meamed": Meamed,
        "mda": MDA,
        "monna": MoNNA,
        "dnc": DnC,
        "signguard": SignGuard,
        "flame": FLAME,
        "foolsgold": FoolsGold,
        "fldetector": FLDetector,
        "caf": CAF,
        "smea": SMEA,
    },
)


def get(name: str, **params: Any) -> Aggregator:
    """Build the aggregator called ``name`` with its settings (unknown keys are an error)."""
    return REGISTRY.build(name, params)


__all__ = [
    "CAF",
    "FLAME",
    "MDA",
    "REGISTRY",
    "SMEA",
    "Aggregate",
    "Aggregator",
    "AggregatorError",
    "DnC",
    "FLDetector",
    "FoolsGold",
    "Meamed",
    "MoNNA",
    "RoundContext",
    "SignGuard",
    "get",
    "sanitize",
    "settings",
]
