"""Meamed, the mean around the median (Xie, Koyejo & Gupta, 2018): per coordinate, the mean of
the n - f values closest to the coordinate median."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from diversefl.aggregators.trimmed_mean import TrimmedMeanXie


@dataclass
class Meamed(TrimmedMeanXie):
    """Mean around the median: per coordinate, average the ``n - f`` values closest to the
    coordinate median.

    The same computation as ``trimmed_mean_xie`` (:func:`closest_to_median_mean`: the median of
    an even count is the mean of the two middle values; equally far values on opposite sides of
    the median keep the smaller), under the name ByzFL and the peer libraries use. With
    ``f = 0`` it is the plain mean. The kept set differs per coordinate, so ``accepted`` is all
    True. Needs ``n - f >= 1``.

    References
    ----------
    C. Xie, O. Koyejo, I. Gupta. "Generalized Byzantine-tolerant SGD", arXiv:1802.10116, 2018
    (Definition 4, mean-around-median).
    """

    name: ClassVar[str] = "meamed"
