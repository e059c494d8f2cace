"""FoolsGold (Fung, Yoon & Beschastnikh, RAID 2020): down-weight clients whose accumulated
updates are too similar to another client's (sybils pushing one shared objective)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, AggregatorError, RoundContext
from diversefl.aggregators.flame import cosine_similarities


def foolsgold_weights(history: Tensor, kappa: float) -> Tensor:
    """FoolsGold's per-client learning rates ``[n]`` (float64, in ``[0, 1]``) from the clients'
    accumulated updates ``history [n, d]`` (Algorithm 1 of the paper).

    ``cs`` = pairwise cosine similarities with a zero diagonal (as in the authors' code);
    ``v_i = max_j cs_ij``; pardoning: ``cs_ij *= v_i / v_j`` where ``v_j > v_i``;
    ``alpha_i = clip(1 - max_j cs_ij, 0, 1)``, rescaled so the largest is 1; then the logit
    ``kappa (ln(alpha / (1 - alpha)) + 0.5)`` clipped to ``[0, 1]`` (``alpha = 1`` gives 1,
    ``alpha = 0`` gives 0, the logit's limits). All zeros when every ``alpha`` is 0."""
    cs = cosine_similarities(history).fill_diagonal_(0.0)
    v = cs.amax(1)
    pardon = v[None, :] > v[:, None]  # v_j > v_i >= 0 (the zero diagonal), so v_j > 0
    cs = torch.where(pardon, cs * v[:, None] / v[None, :].clamp_min(1e-300), cs)
    alpha = (1.0 - cs.amax(1)).clamp(0.0, 1.0)
    top = alpha.max()
    if not float(top) > 0:
        return torch.zeros_like(alpha)
    alpha = alpha / top
    logit = (kappa * (torch.log(alpha / (1.0 - alpha)) + 0.5)).clamp(0.0, 1.0)
    return torch.where(alpha >= 1.0, 1.0, torch.where(alpha <= 0.0, 0.0, logit))


def grown(rows: Tensor, size: int, like: Tensor) -> Tensor:
    """``rows [k, d]`` padded with zero rows to ``max(k, size)`` rows, as ``like``'s device and
    dtype (a new tensor; ``rows`` is never modified)."""
    rows = rows.to(device=like.device, dtype=like.dtype)
    if size <= rows.shape[0]:
        return rows
    pad = torch.zeros(size - rows.shape[0], like.shape[1], dtype=like.dtype, device=like.device)
    return torch.cat([rows, pad])


@dataclass
class FoolsGold(Aggregator):
    """FoolsGold: a weighted mean whose per-client weights shrink with the similarity of the
    client's update history to the others' (:func:`foolsgold_weights`).

    The server keeps, per client id (``ctx.client_ids``), the sum of all the updates it has
    sent (its history, this round's included); the cosine similarities of the histories give
    each client a learning rate ``w_i`` in ``[0, 1]`` (pardoning and the logit with
    confidence ``kappa = 1``, as in the paper). The update is ``sum_i w_i z_i / sum_i w_i`` of
    this round's updates (zero when every weight is 0, e.g. when all histories coincide). The
    paper's optional feature-importance weighting is not used (it needs the model's output
    layer). Calling the rule again within the same round (``ctx.round`` unchanged) replaces
    that round's contribution instead of adding it twice. The histories travel through
    :meth:`state_dict` / :meth:`load_state_dict`, so a resumed run continues identically.

    Any ``n``, ``f`` runs (the rule does not use ``f``). ``accepted`` marks the clients of
    positive weight; scores ``{"weight": w_i}``.

    References
    ----------
    C. Fung, C. J. M. Yoon, I. Beschastnikh. "The Limitations of Federated Learning in Sybil
    Settings", RAID 2020 (FoolsGold, Algorithm 1).
    """

    name: ClassVar[str] = "foolsgold"
    keeps_client_history: ClassVar[bool] = True  # keyed by client id: no regrouping first
    kappa: float = 1.0  # confidence parameter of the logit (paper: 1)

    def __post_init__(self) -> None:
        if not self.kappa > 0:
            raise AggregatorError(f"{self.name}: kappa must be > 0, got {self.kappa}")
        self.history: Tensor | None = None  # [clients seen, d]: row id = sum of its updates
        self.start: Tensor | None = None  # the history before round `self.round`
        self.round: int | None = None

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        before = self.start if ctx.round == self.round else self.history
        if before is not None and before.shape[1] != updates.shape[1]:
            raise AggregatorError(
                f"{self.name}: saved histories have {before.shape[1]} entries, updates have "
                f"{updates.shape[1]}"
            )
        assert ctx.client_ids is not None  # RoundContext.__post_init__ fills it
        ids = ctx.client_ids.to(updates.device).long()
        size = int(ids.max()) + 1
        empty = updates.new_zeros(0, updates.shape[1])
        history = grown(empty if before is None else before, size, updates)
        history = history.index_add(0, ids, updates)  # out of place: `before` stays intact
        self.start, self.history, self.round = before, history, ctx.round
        weights = foolsgold_weights(history[ids], self.kappa)
        total = weights.sum()
        if float(total) > 0:
            update = (weights / total).to(updates.dtype) @ updates
        else:
            update = torch.zeros(updates.shape[1], dtype=updates.dtype, device=updates.device)
        return Aggregate(update=update, accepted=weights > 0, scores={"weight": weights})

    def state_dict(self) -> dict[str, Any]:
        """The histories, those before the last round, and that round (None at first)."""
        cpu = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
        return {"history": cpu(self.history), "start": cpu(self.start), "round": self.round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (each history a 2-D float tensor or None)."""
        for key in ("history", "start"):
            value = state.get(key)
            if value is not None and (
                not isinstance(value, Tensor) or value.dim() != 2 or not value.is_floating_point()
            ):
                raise AggregatorError(f"{self.name}: saved {key} must be a 2-D float tensor")
        self.history, self.start, self.round = state["history"], state["start"], state["round"]
