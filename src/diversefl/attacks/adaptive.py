"""An adaptive attack on DiverseFL: each Byzantine client knows its own shared sample, hence
its guiding gradient, and the rule with its settings, and sends the message that does the most
harm after the defense's transformation among those that pass DiverseFL's test."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from diversefl.aggregators.base import RoundContext
from diversefl.aggregators.diversefl import diversefl_accept, diversefl_scores
from diversefl.aggregators.diversefl_auto import AutoThreshold, auto_cone, spread_threshold
from diversefl.aggregators.diversefl_bounds import bounded_mean
from diversefl.aggregators.diversefl_rule import cosine, cosine_pass
from diversefl.attacks.base import Attack

Against = Literal["plain", "clip", "cone", "orthogonal", "agreement", "auto"]
AGAINST: tuple[str, ...] = ("plain", "clip", "cone", "orthogonal", "agreement", "auto")
AGREEMENT_STEPS = 9  # against "agreement": the cosines tried, from the threshold's to 1
SPREAD_PASSES = 20  # against auto_mad: passes to find messages above the thresholds they raise


def _edge(u: Tensor, v: Tensor, cos_min: float | Tensor) -> Tensor:
    """``cos_min * u + sqrt(1 - cos_min^2) * v`` per row (one cosine, or one per row)."""
    if isinstance(cos_min, Tensor):
        c = cos_min.to(u.dtype)[:, None]
        return c * u + torch.sqrt(1.0 - c * c) * v
    return cos_min * u + math.sqrt(1.0 - cos_min * cos_min) * v


def cone_direction(guiding: Tensor, target: Tensor, cos_min: float | Tensor) -> Tensor:
    """Unit vectors ``[k, d]``: per row of ``guiding``, the direction closest to ``target``
    among those whose cosine with the guiding row is at least ``cos_min`` (one value, or one
    per row ``[k]``).

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
    rotated = _edge(u, v, cos_min)
    flat = ~(perp_norm > 0)  # NaN rows (zero guiding gradient) included, as before
    if bool(flat.any()):
        rotated = torch.where(flat[:, None], u, rotated)  # d = 1: only u is allowed
    inside = (t_par / t_norm) >= cos_min
    if bool(inside.any()):
        rotated = torch.where(inside[:, None], (t / t_norm)[None, :], rotated)
    return rotated


@dataclass
class AdaptiveDiverseFL(Attack):
    """Send, per Byzantine client, the message DiverseFL accepts that does the most harm after
    the defense's transformation (``against``), pointed toward ``t = -mean(honest)``.

    Client j knows its guiding gradient ``g_j`` (``ctx.guiding[ctx.byzantine]``: its own
    shared sample and the current model give exactly what the server computes). Its message
    has cosine ``c`` with ``g_j`` (``cos_min``, set just above the defense's threshold) and a
    ratio ``|z_j| / |g_j|`` inside the band ``(eps1, eps2)``; directions come from
    :func:`cone_direction` (``t``'s own if it is inside the cone, else the cone's edge toward
    ``t``). Per defense (``against``, the rule's settings it faces):

    - ``"plain"`` (the mean of the accepted updates): cosine ``c`` at ratio ``eps2 - margin``,
      the largest accepted step as far uphill as the test allows.
    - ``"clip"`` (``clip_to_guide``): cosine ``c`` at ratio 1; a longer message is clipped to
      ``|g_j|`` anyway, so this is the largest step that survives, with room in the band.
    - ``"cone"`` (``bound = "cone"``): on the cone's edge, cosine ``max(c, cone_cos)``
      (``cone_cos`` None: ``c``; ``"auto"``: the mirrored threshold over ``auto_margin``, the
      server's per-client cone), at ratio 1: projection and clipping leave it as it is.
    - ``"orthogonal"`` (``bound = "orthogonal"``): only ``min(z . u_j, |g_j|) u_j`` survives, a
      positive multiple of the client's own guide, so the harm is in the multiple only. The
      distance of the aggregate from the honest mean is convex in it, so one of the two ends
      of the allowed range is the worst: ``g_j`` itself (cosine 1, ratio 1: the most along
      the guide) or cosine ``c`` at ratio ``eps1 + margin`` (the least); all Byzantine clients
      take the end that puts the aggregate farther from the honest mean.
    - ``"agreement"`` (``bound = "agreement"``): weight ``cos`` trades against direction;
      ratio 1 at each of ``AGREEMENT_STEPS`` cosines from ``c`` to 1, all clients the same
      one, the one that puts the aggregate farthest from the honest mean.
    - ``"auto"`` (``min_cosine = "auto"``, plain mean): as ``"plain"``, with ``c`` the
      server's own threshold for client j plus ``auto_above``. ``cos_min = "auto"`` does the
      same against any of the bounds above.

    The "auto" threshold is mirrored, not read from the server: the attacker computes the two
    half-sample guides of every client (``ctx.guiding_halves``: it knows the samples and the
    model), and keeps the rule's per-client moving average with the rule's settings
    (``auto_margin``, ``auto_decay``, ``auto_fallback``), as its state (:meth:`state_dict`).

    Judging the harm (``"orthogonal"``, ``"agreement"``): the candidate whose defended
    aggregate (:func:`~diversefl.aggregators.diversefl_bounds.bounded_mean`, every row taken as
    accepted) is farthest from the honest mean. The honest rows' guides are read where the
    round context has every client's (the simulator: an omniscient adversary); where it has
    only the Byzantine clients' (a deployed node), an honest row stands as its own guide, so
    the defense leaves it as it is, with weight 1.

    Every message is checked against :func:`diversefl_accept` (and the mirrored "auto"
    threshold): it passes by construction. A client whose guiding gradient is zero,
    non-finite or too small for the message's dtype to square cannot pass and sends ``t``.

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
    # smallest cosine with g kept, so C1 = +1 with room to spare; "auto": the server's own
    # half-sample threshold plus auto_above
    cos_min: float | Literal["auto"] = 0.05
    # the defense it faces: plain, clip, cone, orthogonal, agreement, or auto (min_cosine auto)
    against: Against = "plain"
    # against "cone": the rule's cone_cos (None: the threshold; "auto": mirrored, as the rule's)
    cone_cos: float | Literal["auto"] | None = None
    auto_margin: float = 0.75  # the rule's auto_margin (what the attacker mirrors)
    auto_decay: float = 0.9  # the rule's auto_decay
    auto_fallback: float = 0.0  # the rule's auto_fallback
    auto_batch_noise: bool = False  # the rule's auto_batch_noise
    auto_above: float = 0.02  # with the "auto" threshold: the cosine sent this far above it
    auto_mad: float = 0.0  # the rule's auto_mad (the round's spread raises the thresholds)

    def __post_init__(self) -> None:
        if not self.margin > 0:
            raise ValueError(f"margin must be > 0, got {self.margin}")
        if not 0 <= self.eps1 < self.eps2 - self.margin:
            raise ValueError(
                f"need 0 <= eps1 < eps2 - margin, got eps1={self.eps1}, eps2={self.eps2}, "
                f"margin={self.margin}"
            )
        if isinstance(self.cos_min, str) and self.cos_min != "auto":
            raise ValueError(f"cos_min must be a number in (0, 1) or 'auto', got {self.cos_min!r}")
        if not isinstance(self.cos_min, str) and not 0 < self.cos_min < 1:
            raise ValueError(f"cos_min must be in (0, 1), got {self.cos_min}")
        if self.against not in AGAINST:
            raise ValueError(f"against must be one of {AGAINST}, got {self.against!r}")
        if self.against not in ("plain", "auto") and not self.eps1 < 1 < self.eps2:
            raise ValueError(
                f"against {self.against!r} sends ratio |z| / |g| = 1: need eps1 < 1 < eps2, got "
                f"eps1={self.eps1}, eps2={self.eps2}"
            )
        if isinstance(self.cone_cos, str):
            if self.cone_cos != "auto" or self.cos_min != "auto":
                raise ValueError(
                    f"cone_cos must be a number in [0, 1), or 'auto' with cos_min = 'auto', got "
                    f"cone_cos = {self.cone_cos!r}, cos_min = {self.cos_min!r}"
                )
        elif self.cone_cos is not None and not 0 <= self.cone_cos < 1:
            raise ValueError(f"cone_cos must be in [0, 1), got {self.cone_cos}")
        if not 0 < self.auto_above < 0.05:
            raise ValueError(f"auto_above must be in (0, 0.05), got {self.auto_above}")
        if self.auto_mad < 0 or (self.auto_mad > 0 and self._mirror_needed() is False):
            raise ValueError(
                f"auto_mad must be >= 0 and needs the 'auto' threshold (cos_min = 'auto' or "
                f"against = 'auto'), got auto_mad = {self.auto_mad}"
            )
        self._every: Tensor | None = None  # every client's mirrored threshold this round
        self._mirror: AutoThreshold | None = None  # the server's "auto" thresholds, mirrored
        if self.cos_min == "auto" or self.against == "auto":
            self._mirror = AutoThreshold(
                self.auto_margin, self.auto_decay, self.auto_fallback, warn=False
            )

    def _mirror_needed(self) -> bool:
        """Does this attack mirror the server's "auto" threshold?"""
        return self.cos_min == "auto" or self.against == "auto"

    def __call__(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        if byzantine.shape[0] == 0 or honest.shape[0] == 0:
            return byzantine.clone()
        if ctx.byzantine is None or ctx.guiding_fn is None:
            raise ValueError("the adaptive attack needs ctx.byzantine and guiding gradients")
        byz = ctx.byzantine.to(ctx.guiding.device)
        guiding = ctx.guiding[byz].to(byzantine.device)
        g_norm = guiding.to(torch.float64).norm(dim=1)
        # the server tests in the message's dtype: a guide whose squares underflow there has no
        # usable norm (float32: below ~1e-19 * sqrt(d)), and no message can be made to pass
        floor = math.sqrt(torch.finfo(byzantine.dtype).tiny * guiding.shape[1])
        usable = torch.isfinite(g_norm) & (g_norm > floor)
        threshold = self._server_threshold(ctx, byzantine)
        cos = self.cos_min if threshold is None else (threshold + self.auto_above).clamp(max=0.99)
        assert not isinstance(cos, str)  # "auto" is resolved through the mirror
        target = -honest.mean(0)
        sent = self._message(honest, guiding, g_norm, target, cos, ctx, threshold)
        if not bool(usable.all()):
            sent = torch.where(usable[:, None], sent, target.to(torch.float64)[None, :])
        sent = sent.to(byzantine.dtype)
        tested = threshold
        if self.auto_mad > 0:
            assert isinstance(cos, Tensor) and threshold is not None  # auto_mad needs "auto"
            parts = (honest, guiding, g_norm, target, ctx)
            sent, tested = self._above_the_spread(parts, sent, cos, threshold, usable)
        self._check(guiding.to(sent.dtype), sent, usable, tested)
        return sent

    def _above_the_spread(
        self,
        parts: tuple[Tensor, Tensor, Tensor, Tensor, RoundContext],
        sent: Tensor,
        cos: Tensor,
        base: Tensor,
        usable: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Against ``auto_mad``: the server raises thresholds from the round's cosines, the
        Byzantine ones included, so the messages and the thresholds they face are found
        together. Starting at the "auto" threshold plus ``auto_above``, each pass computes the
        server's raised thresholds from the honest cosines (every client's guide: the
        simulator's omniscient adversary) and the messages' own, and lifts each message's
        cosine to its raised threshold plus ``auto_above``, until every message passes (at
        most ``SPREAD_PASSES``; a row still failing then sends its own guide). Returns the
        messages and the Byzantine rows' raised thresholds."""
        honest, guiding, g_norm, target, ctx = parts
        byz = ctx.byzantine
        assert byz is not None and self._every is not None
        if ctx.guiding.shape[0] != byz.shape[0]:
            raise ValueError(
                "the adaptive attack against auto_mad needs every client's guiding gradient "
                "(the round's spread includes the honest cosines): run it in the simulator"
            )
        dtype = sent.dtype
        byz_cpu = byz.cpu()
        h_guides = self._honest_guides(honest, ctx).to(dtype)
        cos_all = torch.zeros(byz.shape[0], dtype=dtype)
        cos_all[~byz_cpu] = cosine(h_guides, honest.to(dtype)).cpu()
        every = self._every.to(dtype)

        def facing(rows: Tensor) -> tuple[Tensor, Tensor]:
            """The server's raised thresholds for the Byzantine rows (float64) if they send
            ``rows``, and whether each passes them."""
            cos_all[byz_cpu] = cosine(guiding.to(dtype), rows).cpu()
            raised = spread_threshold(cos_all, every, self.auto_margin, self.auto_mad)[byz_cpu]
            ok = cosine_pass(cos_all[byz_cpu], raised).to(rows.device)
            return raised.to(device=rows.device, dtype=torch.float64), ok

        for _ in range(SPREAD_PASSES):
            raised, ok = facing(sent)
            if bool(ok[usable].all()):
                return sent, raised
            cos = torch.maximum(cos, raised + self.auto_above).clamp(max=0.99)
            rows = self._message(honest, guiding, g_norm, target, cos, ctx, base)
            sent = torch.where(usable[:, None], rows.to(dtype), sent)
        _, ok = facing(sent)
        sent = torch.where(ok[:, None] | ~usable[:, None], sent, guiding.to(dtype))
        return sent, facing(sent)[0]

    def _server_threshold(self, ctx: RoundContext, like: Tensor) -> Tensor | None:
        """With the "auto" threshold: the server's threshold ``[f]`` (float64) for each
        Byzantine row this round, mirrored from every client's half-sample guides; else None."""
        if self._mirror is None:
            return None
        if ctx.guiding_halves_fn is None:
            raise ValueError(
                "the adaptive attack against min_cosine = 'auto' needs the half-sample guiding "
                "gradients (ctx.guiding_halves); run it in the simulator"
            )
        assert ctx.client_ids is not None and ctx.byzantine is not None
        halves = ctx.guiding_halves.to(like.dtype)
        q = ctx.sample_over_batch if self.auto_batch_noise else None
        if self.auto_batch_noise and q is None:
            raise ValueError(
                "the adaptive attack mirroring auto_batch_noise needs ctx.sample_over_batch"
            )
        every = self._mirror.thresholds(ctx.round, ctx.client_ids, halves, q)
        self._every = every  # every client's, which auto_mad's spread reads
        return every[ctx.byzantine.cpu()].to(like.device)

    def _message(
        self,
        honest: Tensor,
        guiding: Tensor,
        g_norm: Tensor,
        target: Tensor,
        cos: float | Tensor,
        ctx: RoundContext,
        threshold: Tensor | None = None,
    ) -> Tensor:
        """The Byzantine rows ``[f, d]`` (float64) for the defense named by ``against``
        (``threshold``: the mirrored "auto" thresholds, which ``cone_cos = "auto"`` reads)."""
        scale = g_norm[:, None]
        if self.against in ("plain", "auto"):
            return (self.eps2 - self.margin) * scale * cone_direction(guiding, target, cos)
        if self.against == "clip":
            return scale * cone_direction(guiding, target, cos)
        if self.against == "cone":
            edge = cos if self.cone_cos is None else _at_least(cos, self._cone(threshold))
            return scale * cone_direction(guiding, target, edge)
        if self.against == "orthogonal":
            low = (self.eps1 + self.margin) * scale * cone_direction(guiding, target, cos)
            return self._worst(honest, guiding, ctx, [guiding.to(torch.float64), low])
        steps = torch.linspace(0.0, 1.0, AGREEMENT_STEPS, dtype=torch.float64).tolist()
        tried = [scale * cone_direction(guiding, target, _between(cos, s)) for s in steps]
        return self._worst(honest, guiding, ctx, tried)

    def _cone(self, threshold: Tensor | None) -> float | Tensor:
        """The server's cone cosine: ``cone_cos``, or with "auto" the mirrored threshold over
        ``auto_margin`` per Byzantine row."""
        if self.cone_cos == "auto":
            assert threshold is not None  # cone_cos = "auto" needs cos_min = "auto"
            return auto_cone(threshold, self.auto_margin)
        assert self.cone_cos is not None
        return self.cone_cos

    def _worst(
        self, honest: Tensor, guiding: Tensor, ctx: RoundContext, candidates: list[Tensor]
    ) -> Tensor:
        """The candidate rows ``[f, d]`` whose defended aggregate is farthest from the honest
        mean (ties: the earlier one)."""
        h = honest.to(torch.float64)
        h_guides = self._honest_guides(h, ctx)
        guides = torch.cat([h_guides, guiding.to(torch.float64)])
        accepted = torch.ones(guides.shape[0], dtype=torch.bool, device=guides.device)
        mean = h.mean(0)
        best, best_gap = candidates[0], -1.0
        for rows in candidates:
            everyone = torch.cat([h, rows])
            out = bounded_mean(self.against, guides, everyone, accepted, 0.0)
            gap = float((out - mean).norm())
            if gap > best_gap:
                best, best_gap = rows, gap
        return best

    @staticmethod
    def _honest_guides(honest: Tensor, ctx: RoundContext) -> Tensor:
        """The honest rows' guides where the context has every client's (the simulator), else
        the honest rows themselves (the defense then leaves them as they are)."""
        byz = ctx.byzantine
        assert byz is not None  # checked by the caller
        every = byz.shape[0] == honest.shape[0] + int(byz.sum())
        if every and ctx.guiding.shape[0] == byz.shape[0]:
            return ctx.guiding[~byz.to(ctx.guiding.device)].to(honest)
        return honest

    def _check(
        self, guiding: Tensor, sent: Tensor, usable: Tensor, threshold: Tensor | None
    ) -> None:
        """Every usable message passes the server's test (sign and ratio band; the mirrored
        "auto" threshold too): they do by construction, so a failure is a bug."""
        c1, c2 = diversefl_scores(guiding, sent)
        passed = diversefl_accept(c1, c2, self.eps1, self.eps2)
        if threshold is not None:
            passed &= cosine_pass(cosine(guiding, sent), threshold.to(sent.dtype))
        if not bool(passed[usable].all()):
            raise AssertionError("adaptive attack: a constructed update fails DiverseFL's test")

    def state_dict(self) -> dict[str, Any]:
        """The mirrored "auto" thresholds (empty without them), so a resumed run goes on
        exactly."""
        return {} if self._mirror is None else {"auto": self._mirror.ema.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        if self._mirror is not None and state.get("auto") is not None:
            self._mirror.ema.load_state_dict(state["auto"])


def _at_least(cos: float | Tensor, floor: float | Tensor) -> float | Tensor:
    """``max(cos, floor)``, per row when either is a tensor."""
    if isinstance(floor, Tensor):
        return torch.maximum(torch.as_tensor(cos, dtype=floor.dtype), floor)
    return cos.clamp(min=floor) if isinstance(cos, Tensor) else max(cos, floor)


def _between(cos: float | Tensor, s: float) -> float | Tensor:
    """The cosine a share ``s`` of the way from ``cos`` to 1 (at most 1 - 1e-9: a cosine of
    exactly 1 is the guide's direction, which the cone construction gives as its edge)."""
    out = cos + (1.0 - cos) * s
    return out.clamp(max=1.0 - 1e-9) if isinstance(out, Tensor) else min(out, 1.0 - 1e-9)
