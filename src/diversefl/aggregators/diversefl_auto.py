"""DiverseFL's self-calibrating direction threshold (``min_cosine = "auto"``): per client and
round, a threshold derived from the cosine of two guiding gradients the server computes on
the disjoint halves of that client's own shared sample (pure functions), smoothed per client
over rounds (:class:`ThresholdEMA`, the state that travels with checkpoints).

The model behind it. Write a guide on ``s`` sample rows as ``g_s = g + e_s``: the client's
expected gradient ``g`` plus sampling noise of total variance ``E|e_s|^2 = V / s`` (``V``: the
trace of one example's gradient covariance), independent of ``g`` and, in the many dimensions
of a model, orthogonal to it and to other noise. Call ``rho = |g|^2 / (V / s)`` the full guide's
signal-to-noise ratio. Each half guide has noise ``2 V / s``, so the cosine of the two halves is

    c_half = |g|^2 / (|g|^2 + 2 V / s) = rho / (rho + 2),  i.e.  rho = 2 c_half / (1 - c_half).

An honest update on a batch much larger than the sample (batch noise negligible, ``z ~ g``) has
cosine with the full guide ``|g|^2 / (|g| sqrt(|g|^2 + V / s)) = sqrt(rho / (rho + 1))``, which
in terms of ``c_half`` is

    cos_honest = sqrt(2 c_half / (1 + c_half)).

With ``auto_batch_noise`` the update's own batch noise is kept too: a batch of ``m`` rows has
noise ``V / m``, so with ``q = s / m`` (the client's sample size over its batch size, which the
server knows from the configuration) the expected cosine is ``rho / sqrt((rho + 1)(rho + q))``,

    cos_honest = 2 c_half / sqrt((1 + c_half) (2 c_half + q (1 - c_half))),

which is the formula above at ``q = 0`` and lower when the batch is not much larger than the
sample: late in training, when the gradients are mostly noise, this keeps the threshold under
the honest cosines that the ``q = 0`` prediction overshoots.

The threshold is a share of that prediction, ``threshold = auto_margin * cos_honest``: the
margin absorbs what the model leaves out (a batch that is not much larger than the sample lowers
the honest cosine, see :func:`predicted_honest_cosine`) and the spread of the honest cosines
around their expectation. ``c_half <= 0`` (noise as large as the signal) predicts 0: the bare
sign test. Thresholds are clipped to ``[0, AUTO_CAP]`` and smoothed per client with an
exponential moving average, because one round's ``c_half`` is itself a noisy estimate.

Nothing here reads a client's update: the threshold comes from the server's own computation
on the sample the client shared once, so a client cannot move its threshold round by round.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from diversefl.aggregators.diversefl_rule import cosine
from diversefl.aggregators.quarantine import client_index

AUTO_CAP = 0.95  # the largest threshold "auto" sets: a cosine above it is not asked for
AUTO_CONE_CAP = 0.99  # cone_cos = "auto": the narrowest cone (a cosine of 1 would leave a line)
AUTO_MAD_CAP = 0.95  # auto_mad: the largest share of the prediction the round's spread may ask for
AUTO_MAD_MIN_CLIENTS = 5  # auto_mad: fewer calibrated clients in a round give no spread to read
MAD_TO_SD = 1.4826  # the median absolute deviation of a normal sample, in standard deviations


def half_cosine(halves: Tensor) -> Tensor:
    """Per client, the cosine ``c_half`` of its two half-sample guides ``halves [2, n, d]``
    (0 where either is zero)."""
    return cosine(halves[0], halves[1])


def usable_halves(halves: Tensor) -> Tensor:
    """Per client: are both half-sample guides finite and nonzero? (Not when its sample has
    fewer than 2 rows: its second half is empty, a zero gradient.) Norms in float64 (a
    float64 ``halves`` is used as it is)."""
    norms = halves.to(torch.float64).norm(dim=2)  # [2, n]
    return (torch.isfinite(norms) & (norms > 0)).all(dim=0)


def predicted_honest_cosine(c_half: Tensor, sample_over_batch: Tensor | None = None) -> Tensor:
    """The cosine an honest update is expected to have with the full guide, given the cosine
    ``c`` of the two half-sample guides (clipped to ``[0, 1]``): ``sqrt(2 c / (1 + c))`` for a
    batch much larger than the sample, or with ``sample_over_batch`` (``q = s / m`` per client)
    ``2 c / sqrt((1 + c) (2 c + q (1 - c)))`` (the derivation is in the module docstring)."""
    c = c_half.clamp(0.0, 1.0)
    if sample_over_batch is None:
        return torch.sqrt(2.0 * c / (1.0 + c))
    q = sample_over_batch.to(c.dtype).clamp_min(0.0)
    denom = torch.sqrt((1.0 + c) * (2.0 * c + q * (1.0 - c)))
    return torch.where(denom > 0, 2.0 * c / denom.clamp_min(torch.finfo(c.dtype).tiny), 0.0)


def predicted_honest_ratio(predicted_cos: Tensor, sample_over_batch: Tensor) -> Tensor:
    """``auto_ratio``: the norm ratio ``|z| / |g_s|`` an honest update is expected to have with
    its full guide, given its predicted honest cosine ``p`` (with the batch-noise term) and
    ``q = s / m``: ``r = (p (1 - q) + sqrt(p^2 (1 - q)^2 + 4 q)) / 2``.

    In the module's model ``|g_s|^2 = |g|^2 (1 + 1 / rho)`` and ``|z|^2 = |g|^2 (1 + q / rho)``,
    so ``r^2 = (rho + q) / (rho + 1)``; with ``p = rho / sqrt((rho + 1)(rho + q))``, ``p r =
    rho / (rho + 1)`` and ``r^2 = q + (1 - q) p r``, whose positive root is the formula. It is 1
    without noise (``p = 1``) and ``sqrt(q)`` when noise is all there is (``p = 0``): a guide on
    fewer rows than the batch is the longer of the two, so late in training an honest update
    sits near ``sqrt(q)`` times its guide's norm, which for a 3% sample and a 10% batch
    (``sqrt(0.3) = 0.55``) is at the paper's lower bound of 0.5."""
    p = predicted_cos.to(torch.float64).clamp(0.0, 1.0)
    q = sample_over_batch.to(torch.float64).clamp_min(0.0)
    b = p * (1.0 - q)
    return (b + torch.sqrt(b * b + 4.0 * q)) / 2.0


def auto_threshold(
    c_half: Tensor, margin: float, cap: float = AUTO_CAP, sample_over_batch: Tensor | None = None
) -> Tensor:
    """One round's threshold per client: ``margin`` times :func:`predicted_honest_cosine`,
    clipped to ``[0, cap]``."""
    return (margin * predicted_honest_cosine(c_half, sample_over_batch)).clamp(0.0, cap)


def auto_cone(threshold: Tensor, margin: float) -> Tensor:
    """``cone_cos = "auto"``: per client, the predicted honest cosine behind its "auto"
    threshold (``threshold / margin``, undoing the margin), clipped to ``[0, AUTO_CONE_CAP]``.
    A cone this narrow leaves an honest update at its expected cosine as it is and allows an
    accepted attacker no more orthogonal freedom than an average honest client has."""
    return (threshold / margin).clamp(0.0, AUTO_CONE_CAP)


def spread_threshold(cos: Tensor, threshold: Tensor, margin: float, k: float) -> Tensor:
    """``auto_mad = k``: raise each client's "auto" threshold to ``p_j * lo`` where ``p_j =
    threshold_j / margin`` is its predicted honest cosine and ``lo = median - k * MAD`` (the
    MAD scaled to a standard deviation) of this round's ratios ``cos_j / p_j`` over the
    clients with a prediction, at most ``AUTO_MAD_CAP``; never lowered, at most ``AUTO_CAP``.

    The prediction says where an honest cosine should be; the ratios of the round's clients
    say how far honest cosines actually stray from it, so the margin follows the spread the
    server observes instead of a fixed share. Median and MAD are robust to a minority of
    Byzantine ratios. Rounds with fewer than ``AUTO_MAD_MIN_CLIENTS`` calibrated clients keep
    the thresholds as they are."""
    pred = threshold / margin
    ok = (pred > 0) & torch.isfinite(cos) & torch.isfinite(pred)
    if int(ok.sum()) < AUTO_MAD_MIN_CLIENTS:
        return threshold
    ratio = cos[ok].to(torch.float64) / pred[ok].to(torch.float64)
    med = ratio.quantile(0.5)
    mad = MAD_TO_SD * (ratio - med).abs().quantile(0.5)
    lo = (med - k * mad).clamp(max=AUTO_MAD_CAP).to(threshold.dtype)
    raised = torch.maximum(threshold, (pred * lo).clamp(max=AUTO_CAP))
    return torch.where(ok, raised, threshold)


class ThresholdEMA:
    """Per client id, an exponential moving average of its per-round thresholds (float64).

    A client's first usable round sets its value; later ones update it as ``v <- decay * v +
    (1 - decay) * raw``. Rounds whose halves are unusable leave it where it was. As with the
    quarantine's counts, opening the same round again (the rule called twice in one round)
    first restores the values from before it, so no round is counted twice.
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.value = torch.zeros(0, dtype=torch.float64)  # per client id: the smoothed value
        self.seen = torch.zeros(0, dtype=torch.bool)  # per client id: has a value
        self.round: int | None = None
        self._before: tuple[Tensor, Tensor] | None = None  # the values before `self.round`

    def begin_round(self, r: int) -> None:
        """Start round ``r``; a repeated round replaces its earlier update."""
        if r == self.round and self._before is not None:
            self.value, self.seen = (t.clone() for t in self._before)
        else:
            self._before = (self.value.clone(), self.seen.clone())
            self.round = r

    def update(self, ids: Tensor, raw: Tensor, usable: Tensor) -> Tensor:
        """Fold this round's ``raw [n]`` thresholds of clients ``ids`` in where ``usable``;
        return every client's smoothed value (NaN where it never had a usable round)."""
        index = client_index(ids)
        self._grow(int(index.max()) + 1 if index.numel() else 0)
        raw64, ok = raw.detach().cpu().double(), usable.cpu()
        old, seen = self.value[index], self.seen[index]
        mixed = torch.where(seen, self.decay * old + (1.0 - self.decay) * raw64, raw64)
        self.value[index] = torch.where(ok, mixed, old)
        self.seen[index] = seen | ok
        return self.current(ids)

    def current(self, ids: Tensor) -> Tensor:
        """The smoothed values of clients ``ids`` (NaN where never set)."""
        index = client_index(ids)
        self._grow(int(index.max()) + 1 if index.numel() else 0)
        return torch.where(self.seen[index], self.value[index], torch.nan)

    def _grow(self, size: int) -> None:
        if size > self.value.numel():
            grow = size - self.value.numel()
            self.value = torch.cat([self.value, torch.zeros(grow, dtype=torch.float64)])
            self.seen = torch.cat([self.seen, torch.zeros(grow, dtype=torch.bool)])

    def state_dict(self) -> dict[str, Any]:
        """The values, which clients have one, and the last round counted."""
        return {"value": self.value.clone(), "seen": self.seen.clone(), "round": self.round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        value, seen = state["value"], state["seen"]
        if not (isinstance(value, Tensor) and isinstance(seen, Tensor)):
            raise ValueError("diversefl: the auto threshold state must hold tensors")
        if value.shape != seen.shape or value.dim() != 1:
            raise ValueError(
                f"diversefl: auto threshold state of shapes {tuple(value.shape)} and "
                f"{tuple(seen.shape)}; expected two equal 1-D shapes"
            )
        self.value = value.to(torch.float64).clone()
        self.seen = seen.to(torch.bool).clone()
        self.round = state["round"]
        self._before = None


class AutoThreshold:
    """The whole ``min_cosine = "auto"`` computation for one rule: raw per-round thresholds from
    the half-sample guides, their per-client average, and the fixed ``fallback`` for clients
    that never had two usable halves (a warning names them once, unless ``warn`` is False:
    an attacker mirroring the server's computation stays quiet)."""

    def __init__(self, margin: float, decay: float, fallback: float, warn: bool = True) -> None:
        self.margin, self.fallback = margin, fallback
        self.ema = ThresholdEMA(decay)
        self.warn = warn
        self._warned: set[int] = set()

    def thresholds(
        self, r: int, ids: Tensor, halves: Tensor, sample_over_batch: Tensor | None = None
    ) -> Tensor:
        """Round ``r``'s threshold ``[n]`` (float64, CPU) of clients ``ids`` given their
        half-sample guides ``[2, n, d]`` (and, for the batch-noise term, each client's sample
        size over its batch size ``[n]``); updates the per-client averages."""
        self.ema.begin_round(r)
        wide = halves.to(torch.float64)  # one float64 copy for both (73 MB on the MLP)
        c_half = half_cosine(wide)
        q = None if sample_over_batch is None else sample_over_batch.to(c_half)
        raw = auto_threshold(c_half, self.margin, sample_over_batch=q)
        usable = usable_halves(wide)
        smoothed = self.ema.update(ids, raw, usable)
        missing = smoothed.isnan()
        if bool(missing.any()):
            self._warn(client_index(ids)[missing].tolist())
        return torch.where(missing, self.fallback, smoothed)

    def calibrated(self, ids: Tensor) -> Tensor:
        """Per client ``ids``: has it had a usable round, so that its threshold is a
        prediction (not the fixed ``fallback``)?"""
        return ~self.ema.current(ids).isnan()

    def _warn(self, ids: list[int]) -> None:
        new = sorted(set(ids) - self._warned)
        if new and self.warn:
            self._warned.update(new)
            warnings.warn(
                f"diversefl: min_cosine = 'auto' cannot calibrate clients {new[:10]}"
                f"{' ...' if len(new) > 10 else ''} (fewer than 2 sample rows, or a zero "
                f"half-sample guide): they use the fixed auto_fallback = {self.fallback}",
                stacklevel=3,
            )
