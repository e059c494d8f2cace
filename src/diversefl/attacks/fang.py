"""Fang et al.'s full-knowledge local model poisoning attacks (USENIX Security 2020), in the
gradient form of Shejwalkar & Houmansadr (NDSS 2021): one tailored to Krum, one to the
coordinate-wise rules (trimmed mean and median)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import RoundContext
from diversefl.aggregators.krum import krum_scores, pairwise_sq_dists
from diversefl.attacks.base import Attack


def krum_lambda_bound(honest: Tensor, n: int, f: int) -> float:
    """Fang et al.'s upper bound on lambda (Section 3.2, "Attacking Krum"), distances unsquared:

    ``1 / ((n - 2f - 1) sqrt(d)) * min_i sum_{l in N_i} |h_l - h_i| + max_i |h_i - mean| /
    sqrt(d)``, ``i`` over the honest rows and ``N_i`` the ``n - f - 2`` honest rows nearest to
    ``h_i`` (all of the others when fewer). ``n - 2f - 1`` is floored at 1 (Krum needs
    ``n > 2f + 2``, so the floor only acts outside Krum's range).
    """
    m, d = honest.shape
    dist = pairwise_sq_dists(honest).sqrt()
    dist.fill_diagonal_(float("inf"))
    k = min(max(n - f - 2, 0), m - 1)
    near = dist.topk(k, dim=1, largest=False).values.sum(1) if k > 0 else dist.new_zeros(m)
    h = honest.to(torch.float64)
    spread = float((h - h.mean(0, keepdim=True)).norm(dim=1).max())
    return float(near.min()) / (max(n - 2 * f - 1, 1) * math.sqrt(d)) + spread / math.sqrt(d)


def krum_picks_byzantine(honest: Tensor, sent: Tensor, f: int, copies: int) -> bool:
    """Whether Krum (``n - f - 2`` neighbours, ties to the lowest index) over the honest rows
    followed by ``copies`` copies of ``sent`` selects a copy."""
    stack = torch.cat([honest, sent.expand(copies, -1)])
    scores = krum_scores(pairwise_sq_dists(stack), f)
    return int(torch.argmin(scores)) >= honest.shape[0]


def fang_krum_message(honest: Tensor, n: int, f: int, threshold: float) -> Tensor:
    """``mean - lambda * sign(mean)`` with lambda halved from :func:`krum_lambda_bound` until
    Krum selects one of the ``f`` copies, or until lambda drops below ``threshold`` (then the
    last lambda tried is sent)."""
    mean = honest.mean(0)
    direction = torch.sign(mean)
    lam = krum_lambda_bound(honest, n, f)
    while True:
        sent = mean - lam * direction
        if lam < threshold or krum_picks_byzantine(honest, sent, f, f):
            return sent
        lam *= 0.5


@dataclass
class FangKrum(Attack):
    """Every Byzantine client sends ``mean(honest) - lambda * sign(mean(honest))``.

    The message moves every coordinate against the honest direction by the same ``lambda``,
    the largest (found by halving from the paper's upper bound) for which Krum still selects
    it, so that Krum steps with the attacker's update. Fang et al. attack the global model
    (``w_Re - lambda s``); as in Shejwalkar & Houmansadr's gradient form, the reference here is
    the honest mean and every Byzantine client sends the same message.

    References
    ----------
    M. Fang, X. Cao, J. Jia, N. Z. Gong. "Local Model Poisoning Attacks to Byzantine-Robust
    Federated Learning", USENIX Security 2020 (Section 3.2, full knowledge).
    V. Shejwalkar, A. Houmansadr. "Manipulating the Byzantine: Optimizing Model Poisoning
    Attacks and Defenses for Federated Learning", NDSS 2021 (the gradient form).
    """

    name: ClassVar[str] = "fang_krum"
    needs_other_clients: ClassVar[bool] = True  # the honest mean and pairwise distances
    uses_own_gradients: ClassVar[bool] = False
    threshold: float = 1e-5  # stop halving lambda below this (paper: 1e-5)

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"fang_krum: threshold must be > 0, got {self.threshold}")

    def __call__(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        if byzantine.shape[0] == 0 or honest.shape[0] == 0:
            return byzantine.clone()
        f = byzantine.shape[0]
        sent = fang_krum_message(honest, honest.shape[0] + f, f, self.threshold)
        return sent.expand(f, -1).clone().to(byzantine.dtype)


def fang_trimmed_messages(honest: Tensor, f: int, b: float, generator: torch.Generator) -> Tensor:
    """``[f, d]`` messages beyond the honest extremes, against the sign of the honest mean.

    Coordinate ``j`` with ``mean_j >= 0`` gets values drawn uniformly in ``[min_j / b, min_j]``
    when ``min_j > 0``, else in ``[b min_j, min_j]``; with ``mean_j < 0``: in
    ``[max_j, b max_j]`` when ``max_j > 0``, else in ``[max_j, max_j / b]`` (Fang et al.,
    Section 3.2, with ``s_j = -sign(mean_j)`` the direction the model moves in)."""
    h = honest.to(torch.float64)
    lo, hi, up = h.min(0).values, h.max(0).values, h.mean(0) < 0
    edge = torch.where(up, hi, lo)
    # the far end of the interval: farther from zero when pushing outwards, nearer otherwise
    outward = torch.where(up, edge > 0, edge <= 0)
    far = torch.where(outward, edge * b, edge / b)
    u = torch.rand((f, h.shape[1]), generator=generator, dtype=torch.float64)
    return (edge + u * (far - edge)).to(honest.device)


@dataclass
class FangTrimmedMean(Attack):
    """Each Byzantine client sends, coordinate by coordinate, a value just beyond the honest
    minimum (where the honest mean is >= 0) or maximum (where it is < 0), drawn uniformly
    between that extreme and ``b`` times it (or it divided by ``b``, whichever lies beyond).

    Against trimmed mean and median the messages shift every coordinate's order statistics
    the wrong way. ``b`` (paper: 2) bounds how far out they lie; draws use the round's seeded
    generator.

    References
    ----------
    M. Fang, X. Cao, J. Jia, N. Z. Gong. "Local Model Poisoning Attacks to Byzantine-Robust
    Federated Learning", USENIX Security 2020 (Section 3.2, attacking trimmed mean / median,
    full knowledge).
    """

    name: ClassVar[str] = "fang_trmean"
    needs_other_clients: ClassVar[bool] = True  # the honest extremes per coordinate
    uses_own_gradients: ClassVar[bool] = False
    b: float = 2.0  # how far beyond the honest extremes, as a factor (paper: 2)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.b) and self.b > 1):
            raise ValueError(f"fang_trmean: b must be finite and > 1, got {self.b}")

    def __call__(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        if byzantine.shape[0] == 0 or honest.shape[0] == 0:
            return byzantine.clone()
        sent = fang_trimmed_messages(honest, byzantine.shape[0], self.b, ctx.generator)
        return sent.to(byzantine.device, byzantine.dtype)
