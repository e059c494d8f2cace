"""DiverseFL's per-client test as pure functions over ``[n, d]`` tensors: the paper's rule
(:func:`diversefl_test`) and the stateless hardenings that compose around it (a cosine
threshold, a per-layer direction test, clipping to the guide's norm). The stateful hardening,
quarantine, is in :mod:`diversefl.aggregators.quarantine`; the class that composes them all is
:class:`diversefl.aggregators.diversefl.DiverseFL`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diversefl.aggregators.base import AggregatorError


def dots_and_norms(guiding: Tensor, updates: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-client ``guiding . update``, ``|guiding|`` and ``|update|``: one pass each."""
    return (guiding * updates).sum(dim=1), guiding.norm(dim=1), updates.norm(dim=1)


def cosine_of(dots: Tensor, g_norm: Tensor, z_norm: Tensor) -> Tensor:
    """Cosine from precomputed dot products and norms (0 where either vector is zero)."""
    norms = g_norm * z_norm
    return torch.where(norms > 0, dots / norms.clamp_min(torch.finfo(dots.dtype).tiny), 0.0)


def cosine(guiding: Tensor, updates: Tensor) -> Tensor:
    """Per-client cosine similarity of guiding gradient and update (0 where either is zero)."""
    return cosine_of(*dots_and_norms(guiding, updates))


def _c1_c2(dots: Tensor, g_norm: Tensor, z_norm: Tensor) -> tuple[Tensor, Tensor]:
    return torch.sign(dots), z_norm / g_norm


def diversefl_scores(guiding: Tensor, updates: Tensor) -> tuple[Tensor, Tensor]:
    """Per-client C1 = sign(guiding . update) (eq. 7) and C2 = |update| / |guiding| (eq. 8).

    A zero guiding gradient gives C2 = inf (or NaN for a zero update too), which fails eq. 10.
    """
    return _c1_c2(*dots_and_norms(guiding, updates))


def ratio_in_band(c2: Tensor, eps1: float | Tensor, eps2: float | Tensor) -> Tensor:
    """The norm condition of eq. 10: ``eps1 < C2 < eps2``, both strict (NaN fails); a bound
    may be one per client (``[n]``)."""
    return (c2 > eps1) & (c2 < eps2)


def diversefl_accept(c1: Tensor, c2: Tensor, eps1: float, eps2: float) -> Tensor:
    """Algorithm 1, line 10: accept iff C1 > 0 and eps1 < C2 < eps2 (NaN fails)."""
    return (c1 > 0) & ratio_in_band(c2, eps1, eps2)


@dataclass(frozen=True)
class DiverseFLTest:
    """The paper's test of every client (all ``[n]``): its scores, the two conditions apart
    (the hardenings replace or tighten the direction one) and the decision."""

    c1: Tensor  # sign(guiding . update)
    c2: Tensor  # |update| / |guiding|
    cos: Tensor  # cosine of guiding and update (0 where either is zero)
    in_band: Tensor  # eps1 < c2 < eps2
    accepted: Tensor  # c1 > 0 and in_band: the paper's decision
    g_norm: Tensor  # |guiding|
    z_norm: Tensor  # |update|

    def scores(self) -> dict[str, Tensor]:
        """The per-client scores every DiverseFL round logs (``c1``, ``c2``, ``cos``)."""
        return {"c1": self.c1, "c2": self.c2, "cos": self.cos}


def diversefl_test(guiding: Tensor, updates: Tensor, eps1: float, eps2: float) -> DiverseFLTest:
    """DiverseFL's plain rule (eqs. 7-10) on guiding gradients and updates ``[n, d]``: one
    pass for the dot products and norms, from which C1, C2, the cosine and the decision follow.
    """
    dots, g_norm, z_norm = dots_and_norms(guiding, updates)
    c1, c2 = _c1_c2(dots, g_norm, z_norm)
    return DiverseFLTest(
        c1=c1,
        c2=c2,
        cos=cosine_of(dots, g_norm, z_norm),
        in_band=ratio_in_band(c2, eps1, eps2),
        accepted=diversefl_accept(c1, c2, eps1, eps2),
        g_norm=g_norm,
        z_norm=z_norm,
    )


def cosine_pass(cos: Tensor, min_cosine: float | Tensor) -> Tensor:
    """The ``min_cosine`` hardening: the direction test becomes ``cos > min_cosine`` instead of
    the sign test ``C1 > 0`` (which ``min_cosine = 0`` is); one threshold, or one per client
    ``[n]`` (``min_cosine = "auto"``)."""
    return cos > min_cosine


def direction_pass(test: DiverseFLTest, min_cosine: float) -> Tensor:
    """The direction condition of a test: ``cos > min_cosine``, or the paper's ``C1 > 0`` when
    ``min_cosine = 0``."""
    if min_cosine > 0:
        return cosine_pass(test.cos, min_cosine)
    return test.c1 > 0


def _block_direction_ok(g: Tensor, z: Tensor, min_cosine: float) -> Tensor:
    """One layer block's direction test; a block whose guide is zero carries no direction."""
    dots, g_norm, z_norm = dots_and_norms(g, z)
    ok = cosine_of(dots, g_norm, z_norm) > min_cosine if min_cosine > 0 else dots > 0
    return ok | (g_norm == 0)


def layer_direction_pass(
    guiding: Tensor, updates: Tensor, sizes: tuple[int, ...], min_cosine: float
) -> Tensor:
    """The ``per_layer`` hardening. Per client: does every layer block of the update point
    along the guiding gradient's block (``cos > min_cosine``; ``min_cosine = 0`` is the sign
    test ``dot > 0``)? Blocks where the guiding gradient is zero carry no direction and are
    skipped."""
    if sum(sizes) != updates.shape[1]:
        raise AggregatorError(
            f"diversefl: layer sizes sum to {sum(sizes)}, updates have {updates.shape[1]} entries"
        )
    ok = torch.ones(updates.shape[0], dtype=torch.bool, device=updates.device)
    for g, z in zip(guiding.split(sizes, dim=1), updates.split(sizes, dim=1), strict=True):
        ok &= _block_direction_ok(g, z, min_cosine)
    return ok


def clip_factor(g_norm: Tensor, z_norm: Tensor) -> Tensor:
    """Per row ``min(1, |g_j| / |z_j|)``: 1 for a zero row, 0 where the ratio is NaN."""
    factor = torch.clamp(g_norm / z_norm.clamp_min(torch.finfo(z_norm.dtype).tiny), max=1.0)
    return factor.nan_to_num(0.0)


def clip_to_guide(updates: Tensor, g_norm: Tensor, z_norm: Tensor) -> Tensor:
    """The ``clip_to_guide`` hardening: every row scaled down to at most its guide's norm,
    ``z_j * min(1, |g_j| / |z_j|)`` (a zero update stays zero; a NaN factor becomes 0)."""
    return updates * clip_factor(g_norm, z_norm)[:, None]
