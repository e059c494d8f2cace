"""An adaptive attack on DiverseFL: each Byzantine client knows its own shared sample, hence
its guiding gradient, and sends the most harmful vector that still passes DiverseFL's test."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import RoundContext
from diversefl.aggregators.diversefl import diversefl_accept, diversefl_scores
from diversefl.attacks.base import Attack


def cone_direction(guiding: Tensor, target: Tensor, cos_min: float) -> Tensor:
    """Unit vectors ``[k, d]``: per row of ``guiding``, the direction closest to ``target``
    among those whose cosine with the guiding row is at least ``cos_min``.

    Gram-Schmidt in ``span{g, t}``: ``u = g / |g|``, ``v`` = the normalised component of ``t``
    orthogonal to ``u``. If ``cos(t, g) >= cos_min`` the answer is ``t / |t|``; otherwise it is
    on the cone's boundary, rotated from ``u`` toward ``t``:
    ``cos_min * u + sqrt(1 - cos_min^2) * v``. When ``t`` is (anti)parallel to ``g`` any ``v``
    orthogonal to ``u`` is equally close; the coordinate axis least aligned with ``u`` is used.
    A zero ``t`` gives ``u``; rows with a zero guiding gradient are NaN (callers mask them).
    """
    g = guiding.to(torch.float64)
    t = target.to(torch.float64)
    u = g / g.norm(dim=1, keepdim=True)
    t_norm = t.norm()
    if float(t_norm) == 0.0:
        return u
    t_par = u @ t  # [k]
    perp = t[None, :] - t_par[:, None] * u
    perp_norm = perp.norm(dim=1)
    # The rare cases below each cost a few full [k, d] passes, so they run only when some row
    # needs them (a ``where`` whose mask is all False returns its other input unchanged).
    degenerate = perp_norm <= 1e-12 * t_norm
    if bool(degenerate.any()):
        # t (anti)parallel to g: the axis least aligned with u, made orthogonal to u.
        axis = u.abs().argmin(dim=1)
        e = torch.zeros_like(u).scatter_(1, axis[:, None], 1.0)
        fallback = e - u.gather(1, axis[:, None]) * u
        perp = torch.where(degenerate[:, None], fallback, perp)
        perp_norm = perp.norm(dim=1)
    v = perp / perp_norm.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
    rotated = cos_min * u + math.sqrt(1.0 - cos_min * cos_min) * v
    flat = ~(perp_norm > 0)  # NaN rows (zero guiding gradient) included, as before
    if bool(flat.any()):
        rotated = torch.where(flat[:, None], u, rotated)  # d = 1: only u is allowed
    inside = (t_par / t_norm) >= cos_min
    if bool(inside.any()):
        rotated = torch.where(inside[:, None], (t / t_norm)[None, :], rotated)
    return rotated


@dataclass
class AdaptiveDiverseFL(Attack):
    """Send the vector closest in direction to ``-mean(honest)`` that DiverseFL accepts.

    For Byzantine client j with guiding gradient ``g_j`` (``ctx.guiding[ctx.byzantine]``: the
    client knows its own shared sample and the current model, so it computes exactly what the
    server computes), and target ``t = -mean(honest)``, the message is
    ``(eps2 - margin) * |g_j| * w_j`` with ``w_j`` from :func:`cone_direction`: ``t``'s
    direction if ``cos(t, g_j) >= cos_min``, else the unit vector in ``span{g_j, t}`` at cosine
    exactly ``cos_min`` with ``g_j``, on ``t``'s side. So ``C1 = sign(g_j . z_j) = +1`` with
    cosine at least ``cos_min``, and ``C2 = |z_j| / |g_j| = eps2 - margin`` sits at the top of
    DiverseFL's band ``(eps1, eps2)``: the largest accepted step, pointed as far uphill as the
    test allows. Every message is checked against :func:`diversefl_accept` (it passes by
    construction); a client whose guiding gradient is zero, non-finite or too small for the
    message's dtype to square cannot pass and sends ``t``.

    References
    ----------
    The attacked rule: S. Prakash, A. S. Avestimehr. "Mitigating Byzantine Attacks in
    Federated Learning" (DiverseFL), eqs. 7-10. The construction is this project's.
    """

    name: ClassVar[str] = "adaptive"
    uses_own_gradients: ClassVar[bool] = False
    reads_guiding: ClassVar[bool] = True
    eps2: float = 2.0  # the defence's upper ratio bound |z| / |g| the attacker targets
    eps1: float = 0.5  # the defence's lower ratio bound (only checked: eps2 - margin > eps1)
    margin: float = 0.05  # sent ratio |z| / |g| = eps2 - margin, this far inside the band
    cos_min: float = 0.05  # smallest cosine with g kept, so C1 = +1 with room to spare

    def __post_init__(self) -> None:
        if not self.margin > 0:
            raise ValueError(f"margin must be > 0, got {self.margin}")
        if not 0 <= self.eps1 < self.eps2 - self.margin:
            raise ValueError(
                f"need 0 <= eps1 < eps2 - margin, got eps1={self.eps1}, eps2={self.eps2}, "
                f"margin={self.margin}"
            )
        if not 0 < self.cos_min < 1:
            raise ValueError(f"cos_min must be in (0, 1), got {self.cos_min}")

    def __call__(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        if byzantine.shape[0] == 0 or honest.shape[0] == 0:
            return byzantine.clone()
        if ctx.byzantine is None or ctx.guiding_fn is None:
            raise ValueError("the adaptive attack needs ctx.byzantine and guiding gradients")
        guiding = ctx.guiding[ctx.byzantine.to(ctx.guiding.device)].to(byzantine.device)
        target = -honest.mean(0)
        g_norm = guiding.to(torch.float64).norm(dim=1)
        # the server tests in the message's dtype: a guide whose squares underflow there has no
        # usable norm (float32: below ~1e-19 * sqrt(d)), and no message can be made to pass
        floor = math.sqrt(torch.finfo(byzantine.dtype).tiny * guiding.shape[1])
        usable = torch.isfinite(g_norm) & (g_norm > floor)
        direction = cone_direction(guiding, target, self.cos_min)
        sent = (self.eps2 - self.margin) * g_norm[:, None] * direction
        if not bool(usable.all()):
            sent = torch.where(usable[:, None], sent, target.to(torch.float64)[None, :])
        sent = sent.to(byzantine.dtype)
        c1, c2 = diversefl_scores(guiding.to(sent.dtype), sent)
        passed = diversefl_accept(c1, c2, self.eps1, self.eps2)
        if not bool(passed[usable].all()):
            raise AssertionError("adaptive attack: a constructed update fails DiverseFL's test")
        return sent
