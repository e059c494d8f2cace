"""Geometric median by the smoothed Weiszfeld algorithm (RFA: Pillutla, Kakade & Harchaoui)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, AggregatorError, RoundContext

# Columns per float64 chunk (as in Krum): 2**18 columns x 8 bytes = 2 MiB per client.
_CHUNK = 1 << 18
# Up to this many entries (512 MiB in float64) the updates are widened once per call rather
# than chunk by chunk in every iteration; the chunks, hence the sums, are the same either way.
_WIDEN_ONCE = 1 << 26


def _weighted_sum(points: Tensor, weights: Tensor) -> Tensor:
    """``sum_i weights_i points_i`` in float64, column chunk by column chunk."""
    out = torch.empty(points.shape[1], dtype=torch.float64, device=points.device)
    for start in range(0, points.shape[1], _CHUNK):
        out[start : start + _CHUNK] = weights @ points[:, start : start + _CHUNK].double()
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


def smoothed_weiszfeld(
    points: Tensor, iters: int = 100, eps: float = 1e-6, tol: float = 1e-7
) -> tuple[Tensor, Tensor]:
    """Approximate ``argmin_z sum_i max(eps, ||z - z_i||)`` by smoothed Weiszfeld iterations.

    Starting from the mean, repeat ``beta_i = 1 / max(eps, ||z - z_i||)`` and
    ``z = sum_i beta_i z_i / sum_i beta_i``, at most ``iters`` times, stopping once the
    objective ``sum_i max(eps, ||z - z_i||)`` changes by less than ``tol`` times its value
    (RFA's stopping rule). The iterate and the distances are kept in float64, computed in
    column chunks (updates of up to 2**26 entries are widened to float64 once per call, larger
    ones chunk by chunk, so their float64 copy is never whole): in float32 the objective's
    rounding is about as large as ``tol``, which would let the row order change the number of
    iterations, hence the result.

    Returns
    -------
    tuple[Tensor, Tensor]
        The median ``[d]`` and the last weights ``beta_i / sum_j beta_j`` ``[n]``, both in
        the dtype of ``points``.
    """
    dtype, n = points.dtype, points.shape[0]
    if points.numel() <= _WIDEN_ONCE:
        points = points.double()  # the helpers' per-chunk .double() is then a no-op
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64, device=points.device)
    z = _weighted_sum(points, weights)
    dists = _distances(points, z).clamp_min(eps)
    objective = float(dists.sum())
    for _ in range(iters):
        beta = 1.0 / dists
        weights = beta / beta.sum()
        z = _weighted_sum(points, weights)
        dists = _distances(points, z).clamp_min(eps)
        new_objective = float(dists.sum())
        done = abs(objective - new_objective) <= tol * new_objective
        objective = new_objective
        if done:
            break
    return z.to(dtype), weights.to(dtype)


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
