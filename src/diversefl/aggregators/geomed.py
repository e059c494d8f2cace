"""Geometric median by the smoothed Weiszfeld algorithm (RFA: Pillutla, Kakade & Harchaoui)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, AggregatorError, RoundContext
from diversefl.aggregators.gram import CHUNK, float64_gram

# Columns per float64 chunk, as in the Gram product: small enough that a chunk's widened copy
# is still in cache when it is used.
_CHUNK = CHUNK


def _weighted_sum(points: Tensor, weights: Tensor) -> Tensor:
    """``sum_i weights_i points_i`` in float64, column chunk by column chunk (each chunk
    widened into one reused, contiguous float64 buffer: the same product as on a fresh copy)."""
    n, d = points.shape
    out = torch.empty(d, dtype=torch.float64, device=points.device)
    buffer = torch.empty(n * min(d, _CHUNK), dtype=torch.float64, device=points.device)
    for start in range(0, d, _CHUNK):
        block = points[:, start : start + _CHUNK]
        chunk = buffer[: block.numel()].view(block.shape)
        chunk.copy_(block)
        # weights @ chunk as matmul computes it (chunk.T.mv(weights)), written into out
        torch.mv(chunk.T, weights, out=out[start : start + _CHUNK])
    return out


# From this many columns (on a CPU) the distances are taken one row at a time through a reused
# buffer (stays in cache) instead of through a whole ``[n, chunk]`` difference (written to
# memory and read back): about 3x faster on the MLP's ``[23, 199,210]``; same bits either way.
_ROWWISE_FROM = 1 << 15


def _row_square_sums(block: Tensor, centre: Tensor, buffer: Tensor) -> Tensor:
    """``sum_j (block_ij - centre_j)^2`` per row, each row's difference written into
    ``buffer`` (float64, reused, so it stays in cache); float32 rows widen exactly in the
    subtraction. The same bits as the whole-block form (tested)."""
    diff = buffer[: centre.shape[0]]
    sums = []
    for row in block:
        torch.sub(row, centre, out=diff)
        sums.append(diff.square_().sum())
    return torch.stack(sums)


def _distances(points: Tensor, z: Tensor) -> Tensor:
    """``||points_i - z||`` in float64 (``z`` float64), column chunk by column chunk."""
    n, d = points.shape
    total = torch.zeros(n, dtype=torch.float64, device=points.device)
    buffer = None
    if d >= _ROWWISE_FROM and points.device.type == "cpu":  # GPUs: fewer kernel launches
        buffer = torch.empty(min(d, _CHUNK), dtype=torch.float64, device=z.device)
    for start in range(0, d, _CHUNK):
        block, centre = points[:, start : start + _CHUNK], z[start : start + _CHUNK]
        if buffer is not None:
            total += _row_square_sums(block, centre, buffer)
        else:
            total += (block.double() - centre[None, :]).square_().sum(1)
    return total.sqrt()


# Distances whose Gram form (below) is under this share of its rounding scale
# ``(|z_i| + sum_j w_j |z_j|)^2`` could have cancelled badly; they are recomputed from
# coordinates (Krum's convention).
_RECHECK = 1e-6


def gram_distances(points: Tensor, gram: Tensor, weights: Tensor) -> Tensor:
    """``||points_i - z||`` in float64 for ``z = weights @ points`` (weights >= 0), from the
    Gram matrix.

    ``||z_i - z||^2 = G_ii - 2 (G w)_i + w.G w``: O(n^2) per call instead of a pass over the
    ``[n, d]`` updates. Every term is a sum of products of entries whose magnitudes add up to
    at most ``(|z_i| + sum_j w_j |z_j|)^2``, so that bounds the rounding error (times float64's
    ~1e-16); a row whose result is not far above it (``z`` within ~1e-3 of that scale of
    ``z_i``, or large rows that cancel in ``z``) is recomputed exactly from ``z``'s coordinates.
    """
    gw = gram @ weights
    zz = weights @ gw
    sq = gram.diagonal()
    d2 = sq - 2 * gw + zz
    norms = sq.clamp_min(0.0).sqrt()
    scale = (norms + weights @ norms).square()
    risky = d2 <= _RECHECK * scale
    if bool(risky.any()):
        z = _weighted_sum(points, weights)
        d2 = d2.clone()
        d2[risky] = _distances(points[risky], z).square()
    return d2.clamp_min(0.0).sqrt()


def smoothed_weiszfeld(
    points: Tensor, iters: int = 100, eps: float = 1e-6, tol: float = 1e-7
) -> tuple[Tensor, Tensor]:
    """Approximate ``argmin_z sum_i max(eps, ||z - z_i||)`` by smoothed Weiszfeld iterations.

    Starting from the mean, repeat ``beta_i = 1 / max(eps, ||z - z_i||)`` and
    ``z = sum_i beta_i z_i / sum_i beta_i``, at most ``iters`` times, stopping once the
    objective ``sum_i max(eps, ||z - z_i||)`` changes by less than ``tol`` times its value
    (RFA's stopping rule). Every iterate is a convex combination ``z = w @ points``, so the
    iterations run on the weights ``w`` and the float64 Gram matrix of the points
    (:func:`gram_distances`); ``z`` itself is formed once, at the end, in float64 column
    chunks. Distances and the objective are float64: in float32 the objective's rounding is
    about as large as ``tol``, which would let the row order change the number of iterations,
    hence the result.

    Returns
    -------
    tuple[Tensor, Tensor]
        The median ``[d]`` and the last weights ``beta_i / sum_j beta_j`` ``[n]``, both in
        the dtype of ``points``.
    """
    dtype, n = points.dtype, points.shape[0]
    gram = float64_gram(points)
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64, device=points.device)
    dists = gram_distances(points, gram, weights).clamp_min(eps)
    objective = float(dists.sum())
    for _ in range(iters):
        beta = 1.0 / dists
        weights = beta / beta.sum()
        dists = gram_distances(points, gram, weights).clamp_min(eps)
        new_objective = float(dists.sum())
        done = abs(objective - new_objective) <= tol * new_objective
        objective = new_objective
        if done:
            break
    return _weighted_sum(points, weights).to(dtype), weights.to(dtype)


@dataclass
class GeoMed(Aggregator):
    """Step with the (smoothed) geometric median of the updates.

    Smoothed Weiszfeld (:func:`smoothed_weiszfeld`): ``beta_i = 1 / max(eps, ||z - z_i||)``,
    ``z <- sum_i beta_i z_i / sum_i beta_i``, from the mean, until the objective's relative
    change is below ``tol`` or ``iters`` iterations. ``accepted`` is all True (every update
    has a positive weight); scores ``{"weight": the final normalised weights}``.

    References
    ----------
    K. Pillutla, S. M. Kakade, Z. Harchaoui. "Robust Aggregation for Federated Learning",
    IEEE Transactions on Signal Processing 70, 2022 (RFA, Algorithm 2).
    """

    name: ClassVar[str] = "geomed"
    iters: int = 100  # most Weiszfeld iterations
    eps: float = 1e-6  # smoothing nu: distances below it count as nu
    tol: float = 1e-7  # stop when the objective's relative change is below this

    def __post_init__(self) -> None:
        if self.iters < 0:
            raise AggregatorError(f"{self.name}: iters must be >= 0, got {self.iters}")
        if not self.eps > 0:
            raise AggregatorError(f"{self.name}: eps must be > 0, got {self.eps}")

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        median, weights = smoothed_weiszfeld(updates, self.iters, self.eps, self.tol)
        accepted = torch.ones(updates.shape[0], dtype=torch.bool, device=updates.device)
        return Aggregate(update=median, accepted=accepted, scores={"weight": weights})
