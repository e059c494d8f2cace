"""CAF, the covariance-bound agnostic filter (Allouah, Guerraoui & Stephan, ICML 2025, as ByzFL
defines it): down-weight the updates that stick out along the top eigenvector of the weighted
covariance until the weights sum to n - 2f, and return the weighted mean seen with the
smallest top eigenvalue."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, AggregatorError, RoundContext
from diversefl.aggregators.smea import centred_gram


def weighted_spectrum(gram: Tensor, c: Tensor) -> tuple[float, Tensor]:
    """For weights ``c [n]`` (sum ``s > 0``) and the centred Gram matrix ``gram [n, n]``: the
    top eigenvalue of ``Sigma_c = (1/s) sum_i c_i (x_i - mu_c)(x_i - mu_c)^T`` and every row's
    squared projection ``tau_i = ((x_i - mu_c) . v)^2`` on its unit top eigenvector ``v``.

    ``G = D D^T`` (``D`` the rows minus ``mu_c``) follows from ``gram``; ``Sigma_c`` shares its
    nonzero eigenvalues with ``W^(1/2) G W^(1/2) / s`` (``W = diag(c)``), whose top eigenvector
    ``u`` gives ``v`` proportional to ``D^T W^(1/2) u`` and so ``tau = (G W^(1/2) u)^2 / (s
    lambda)``: n x n work only. Returns ``(0.0, zeros)`` when ``Sigma_c`` is zero."""
    s = c.sum()
    kc = gram @ c / s
    g = gram - kc[:, None] - kc[None, :] + (c @ kc) / s
    root = c.sqrt()
    values, vectors = torch.linalg.eigh(root[:, None] * g * root[None, :] / s)
    lam = float(values[-1])
    if not lam > 0:
        return 0.0, torch.zeros_like(c)
    return lam, (g @ (root * vectors[:, -1])).square() / (s * lam)


def caf_weights(gram: Tensor, f: int) -> tuple[Tensor, float]:
    """CAF's filter on the centred Gram matrix ``gram [n, n]``: the weights ``[n]`` (float64)
    of the iterate with the smallest top eigenvalue, and that eigenvalue.

    Start from ``c = 1``; while ``sum(c) > n - 2f``: score the weighted mean ``mu_c`` by
    ``lambda_max(Sigma_c)``, then ``c_i <- c_i (1 - tau_i / max_{j: c_j > 0} tau_j)``. Each
    step zeroes at least one weight, so there are at most n steps. ``f = 0`` keeps ``c = 1``.
    """
    n = gram.shape[0]
    c = torch.ones(n, dtype=torch.float64, device=gram.device)
    best, best_value = c, math.inf
    if f == 0:
        return c, weighted_spectrum(gram, c)[0]
    while float(c.sum()) > n - 2 * f:
        lam, tau = weighted_spectrum(gram, c)
        if lam < best_value:
            best, best_value = c, lam
        top = tau[c > 0].max()
        if lam == 0.0 or not float(top) > 0:
            break  # the weighted rows coincide: nothing is left to filter
        c = (c * (1 - tau / top)).clamp_min(0.0)
    return best, best_value


@dataclass
class CAF(Aggregator):
    """CAF: iterative spectral filtering of the updates by their weighted covariance.

    As ByzFL defines it: weights ``c_i = 1``; while ``sum_i c_i > n - 2f``, compute the weighted
    mean ``mu_c = sum_i c_i z_i / sum_i c_i``, the top eigenpair ``(lambda, v)`` of the weighted
    covariance ``Sigma_c = sum_i c_i (z_i - mu_c)(z_i - mu_c)^T / sum_i c_i`` and
    ``tau_i = ((z_i - mu_c) . v)^2``, and set ``c_i <- c_i (1 - tau_i / max_j tau_j)``. The
    update is the ``mu_c`` of smallest ``lambda`` met. Where this differs from ByzFL's code:

    - ``(lambda, v)`` are exact (from the float64 centred Gram matrix, :func:`weighted_spectrum`),
      not one power-method step from a random start, so the rule is deterministic;
    - ``max_j tau_j`` runs over the clients whose weight is still positive (the filter of
      Diakonikolas et al. the rule builds on). Over all clients, as ByzFL's code has it, an
      already-removed outlier keeps the maximum large, the remaining weights then shrink by
      tiny factors and the loop can run for millions of steps;
    - with ``f = 0`` the loop never runs and the update is the plain mean (ByzFL returns None);
    - when the weighted covariance is zero (the weighted rows coincide) the filter stops.

    Needs ``n > 2f`` (ByzFL's condition). ``accepted`` marks the clients of positive weight in
    the chosen iterate; scores ``{"weight": that iterate's weights c_i}``.

    References
    ----------
    Y. Allouah, R. Guerraoui, J. Stephan. "Towards Trustworthy Federated Learning with Untrusted
    Participants", ICML 2025 (CAF, the covariance-bound agnostic filter); ByzFL's ``byzfl.CAF``.
    """

    name: ClassVar[str] = "caf"

    def check(self, n: int, f: int) -> None:
        super().check(n, f)
        if f < 0 or n <= 2 * f:
            raise AggregatorError(
                f"{self.name}: needs f >= 0 and n > 2f clients, got n={n}, f={f} (n must be at "
                f"least {2 * max(f, 0) + 1})"
            )

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        weights, _ = caf_weights(centred_gram(updates), ctx.f)
        share = (weights / weights.sum()).to(updates.dtype)
        return Aggregate(update=share @ updates, accepted=weights > 0, scores={"weight": weights})
