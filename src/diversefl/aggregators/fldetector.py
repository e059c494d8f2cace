"""FLDetector (Zhang, Cao, Jia & Gong, KDD 2022): predict each client's update from its previous
one with an L-BFGS estimate of the Hessian, score clients by how far their updates miss the
prediction, and exclude the cluster of high scores from then on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from diversefl.aggregators.base import Aggregate, Aggregator, AggregatorError, RoundContext
from diversefl.aggregators.gram import CHUNK
from diversefl.aggregators.mean import Mean
from diversefl.aggregators.median import Median
from diversefl.aggregators.trimmed_mean import TrimmedMean

# Relative spread below which the suspicious scores are taken as equal (rounding, not clusters).
SAME = 1e-6

BaseRule = Literal["mean", "median", "trimmed_mean"]
BASE_RULES: dict[str, type[Aggregator]] = {
    "mean": Mean,
    "median": Median,
    "trimmed_mean": TrimmedMean,
}


def cross(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b.T`` in float64 ``[k, j]`` for ``a [k, d]`` and ``b [j, d]``, by column chunks
    (no whole float64 copy of either)."""
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64, device=a.device)
    for start in range(0, a.shape[1], CHUNK):
        out += a[:, start : start + CHUNK].double() @ b[:, start : start + CHUNK].double().T
    return out


def lbfgs_hvp(s: Tensor, y: Tensor, v: Tensor) -> Tensor | None:
    """``B v`` ``[d]`` for the L-BFGS estimate ``B`` of the Hessian from the pairs ``(s_i,
    y_i)`` (rows of ``s``, ``y`` ``[k, d]``, oldest first), or None when they give none.

    The compact form of Byrd, Nocedal & Schnabel (1994) that FLDetector uses: ``B = sigma I -
    [sigma S, Y] M^-1 [sigma S, Y]^T`` with ``sigma = y_k . s_k / s_k . s_k`` (the newest pair),
    ``M = [[sigma S^T S, L], [L^T, -D]]``, ``L`` the strictly lower part of ``S^T Y`` and
    ``D`` its diagonal: the BFGS matrix after the k updates of ``B_0 = sigma I``. float64."""
    k = s.shape[0]
    ss, sy = cross(s, s), cross(s, y)
    sigma = sy[-1, -1] / ss[-1, -1]
    low = torch.tril(sy, diagonal=-1)
    m = torch.cat(
        [torch.cat([sigma * ss, low], 1), torch.cat([low.T, -torch.diag(sy.diagonal())], 1)]
    )
    p = torch.cat([sigma * cross(s, v[None])[:, 0], cross(y, v[None])[:, 0]])
    try:
        q = torch.linalg.solve(m, p)
    except RuntimeError:  # torch.linalg.LinAlgError: singular system
        return None
    if not bool(torch.isfinite(q).all()) or not bool(torch.isfinite(sigma)):
        return None
    out = sigma * v.double()
    for start in range(0, v.shape[0], CHUNK):
        cols = slice(start, start + CHUNK)
        out[cols] -= sigma * q[:k] @ s[:, cols].double() + q[k:] @ y[:, cols].double()
    return out if bool(torch.isfinite(out).all()) else None


def kmeans_1d_costs(points: Tensor, k_max: int) -> Tensor:
    """Optimal 1-D k-means within-cluster sums of squares ``W_1 .. W_k_max`` ``[b, k_max]`` of
    each row of ``points [b, m]`` (float64, ``k_max <= m``): exact, by dynamic programming over
    the sorted values (optimal 1-D clusters are runs of the sorted values)."""
    x = points.sort(1).values
    b, m = x.shape
    zero = x.new_zeros(b, 1)
    s1, s2 = torch.cat([zero, x.cumsum(1)], 1), torch.cat([zero, (x * x).cumsum(1)], 1)
    i = torch.arange(m, device=x.device)[:, None].expand(m, m)
    j = torch.arange(m, device=x.device)[None, :].expand(m, m)
    count = (j - i + 1).clamp_min(1).to(x.dtype)
    total = s1[:, j + 1] - s1[:, i]
    cost = ((s2[:, j + 1] - s2[:, i]) - total.square() / count).clamp_min(0.0)
    cost = torch.where(i <= j, cost, torch.inf)  # cost[:, i, j]: one cluster of x_i .. x_j
    best = cost[:, 0, :]  # k = 1: one cluster of x_0 .. x_j
    costs = [best[:, -1]]
    inf = x.new_full((b, 1), torch.inf)
    for _ in range(1, k_max):
        before = torch.cat([inf, best[:, :-1]], 1)  # best split of x_0 .. x_(i-1)
        best = (before[:, :, None] + cost).amin(1)
        costs.append(best[:, -1])
    return torch.stack(costs, 1)


def gap_clusters(x: Tensor, generator: torch.Generator, k_max: int, refs: int) -> int:
    """The number of clusters the gap statistic (Tibshirani, Walther & Hastie, 2001) finds in
    the 1-D scores ``x [m]``: the smallest ``k`` with ``Gap(k) >= Gap(k+1) - s_(k+1)``.

    Scores are min-max scaled to ``[0, 1]`` (as FLDetector's code does); ``W_k`` is the exact
    k-means cost (:func:`kmeans_1d_costs`); the reference is ``refs`` uniform samples of
    ``m`` points drawn from ``generator``; ``k`` runs to ``min(k_max, m - 1, distinct
    scores)`` (``W_k = 0`` once ``k`` reaches the distinct count, a perfect clustering).
    Scores that all lie within a relative ``SAME`` of the largest are one cluster: scaling
    their rounding differences to ``[0, 1]`` would make structure out of noise."""
    x = x.double()
    m, low, high = x.numel(), x.min(), x.max()
    distinct = int(torch.unique(x).numel())
    k_top = min(k_max, m - 1, distinct)
    if k_top < 2 or not float(high - low) > SAME * float(x.abs().max()):
        return 1
    scaled = ((x - low) / (high - low))[None]
    uniform = torch.rand(refs, m, generator=generator, dtype=torch.float64, device=generator.device)
    w_data = kmeans_1d_costs(scaled, k_top)[0]
    w_data = torch.where(torch.arange(1, k_top + 1, device=x.device) >= distinct, 0.0, w_data)
    log_ref = kmeans_1d_costs(uniform.to(x.device), k_top).clamp_min(1e-300).log()
    gap = log_ref.mean(0) - w_data.log()
    spread = log_ref.std(0, unbiased=False) * (1.0 + 1.0 / refs) ** 0.5
    for k in range(1, k_top):
        if float(gap[k - 1]) >= float(gap[k] - spread[k]):
            return k
    return k_top


def upper_cluster(x: Tensor) -> Tensor:
    """Mask ``[m]`` of the higher of the two clusters of exact 1-D 2-means on ``x`` (``m >= 2``;
    the split is the first of least cost; equal values fall on the same side)."""
    ordered = x.double().sort().values
    m = ordered.numel()
    centred = ordered - ordered.mean()  # sums of squares by prefix sums, less cancellation
    s1, s2 = centred.cumsum(0), centred.square().cumsum(0)
    left = torch.arange(1, m, device=x.device, dtype=torch.float64)  # points below each cut
    low1, low2 = s1[:-1], s2[:-1]
    cost = (low2 - low1.square() / left) + ((s2[-1] - low2) - (s1[-1] - low1).square() / (m - left))
    cut = int(torch.argmin(cost)) + 1
    return x.double() >= ordered[cut]


@dataclass(frozen=True)
class DetectorState:
    """What FLDetector carries between rounds. Per-client tensors are indexed by client id."""

    pairs_s: Tensor  # [k, d] model differences w_t - w_(t-1), oldest first (k <= history)
    pairs_y: Tensor  # [k, d] the matching global update differences g_t - g_(t-1)
    last_params: Tensor | None  # the model of the last round (None: ctx.params not given)
    last_update: Tensor | None  # the aggregate returned last round
    prev: Tensor  # [ids, d] each client's update in round prev_round
    prev_round: Tensor  # [ids] int64 round of that update (-1: none)
    scores: Tensor  # [ids, window] float64 normalised distances, newest last
    count: Tensor  # [ids] int64 rounds scored so far
    flagged: Tensor  # [ids] bool, excluded for good

    def tensors(self) -> dict[str, Tensor | None]:
        """The fields by name (what :meth:`FLDetector.state_dict` saves)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def empty_state(window: int, like: Tensor) -> DetectorState:
    """The state before the first round, for updates shaped like ``like [n, d]``."""
    d, dev = like.shape[1], like.device
    return DetectorState(
        pairs_s=like.new_zeros(0, d),
        pairs_y=like.new_zeros(0, d),
        last_params=None,
        last_update=None,
        prev=like.new_zeros(0, d),
        prev_round=torch.zeros(0, dtype=torch.long, device=dev),
        scores=torch.zeros(0, window, dtype=torch.float64, device=dev),
        count=torch.zeros(0, dtype=torch.long, device=dev),
        flagged=torch.zeros(0, dtype=torch.bool, device=dev),
    )


def with_clients(state: DetectorState, size: int, like: Tensor) -> DetectorState:
    """``state`` on ``like``'s device and dtype, its per-client tensors grown to ``size`` ids."""
    dev, grow = like.device, max(0, size - state.prev.shape[0])

    def pad(t: Tensor, fill: float | int | bool) -> Tensor:
        t = t.to(dev)
        extra = t.new_full((grow, *t.shape[1:]), fill)
        return torch.cat([t, extra]) if grow else t

    moved = {k: None if v is None else v.to(dev) for k, v in state.tensors().items()}
    moved["pairs_s"] = moved["pairs_s"].to(like.dtype)  # type: ignore[union-attr]
    moved["pairs_y"] = moved["pairs_y"].to(like.dtype)  # type: ignore[union-attr]
    moved["prev"] = pad(state.prev.to(like.dtype), 0.0)
    moved["prev_round"] = pad(state.prev_round, -1)
    moved["scores"] = pad(state.scores, 0.0)
    moved["count"] = pad(state.count, 0)
    moved["flagged"] = pad(state.flagged, False)
    return DetectorState(**moved)  # type: ignore[arg-type]


def model_step(state: DetectorState, params: Tensor | None) -> Tensor | None:
    """``w_t - w_(t-1)``: from the model (``ctx.params``) when both rounds have it, else minus
    the last aggregate (the step up to the learning rate and weight decay); None at first."""
    if params is not None and state.last_params is not None:
        return params.reshape(-1).to(state.last_params) - state.last_params
    if state.last_update is not None:
        return -state.last_update
    return None


def scored(
    state: DetectorState, updates: Tensor, ids: Tensor, r: int, step: Tensor | None
) -> DetectorState:
    """``state`` with this round's suspicious scores pushed for every client that sent an update
    last round and is not flagged: ``|g_i^(t-1) + H (w_t - w_(t-1)) - g_i^t|``, divided by
    their sum over those clients. Unchanged without a model step or a Hessian estimate."""
    fresh = (state.prev_round[ids] == r - 1) & ~state.flagged[ids]
    if step is None or state.pairs_s.shape[0] == 0 or not bool(fresh.any()):
        return state
    hvp = lbfgs_hvp(state.pairs_s, state.pairs_y, step)
    if hvp is None:
        return state
    who = ids[fresh]
    predicted = state.prev[who].double() + hvp[None, :]
    dist = torch.linalg.vector_norm(predicted - updates[fresh].double(), dim=1)
    total = dist.sum()
    share = dist / total if float(total) > 0 else torch.zeros_like(dist)
    scores = state.scores.clone()
    scores[who] = torch.cat([scores[who, 1:], share[:, None]], 1)
    count = state.count.clone()
    count[who] += 1
    return dataclasses.replace(state, scores=scores, count=count)


def remembered(
    state: DetectorState,
    updates: Tensor,
    ids: Tensor,
    r: int,
    params: Tensor | None,
    step: Tensor | None,
    update: Tensor,
    history: int,
) -> DetectorState:
    """``state`` after round ``r``: the new pair ``(w_t - w_(t-1), g_t - g_(t-1))`` (when there
    is a step, a last aggregate and a nonzero step; the oldest beyond ``history`` dropped), the
    model and aggregate of this round and every client's update."""
    pairs_s, pairs_y = state.pairs_s, state.pairs_y
    if step is not None and state.last_update is not None and float(step.square().sum()) > 0:
        pairs_s = torch.cat([pairs_s, step[None].to(pairs_s.dtype)])[-history:]
        change = update - state.last_update
        pairs_y = torch.cat([pairs_y, change[None].to(pairs_y.dtype)])[-history:]
    prev = state.prev.index_put((ids,), updates)
    prev_round = state.prev_round.index_put((ids,), torch.full_like(ids, r))
    return dataclasses.replace(
        state,
        pairs_s=pairs_s,
        pairs_y=pairs_y,
        last_params=None if params is None else params.reshape(-1).detach().clone(),
        last_update=update.detach().clone(),
        prev=prev,
        prev_round=prev_round,
    )


def detected(
    state: DetectorState, ids: Tensor, window: int, generator: torch.Generator, k_max: int,
    refs: int,
) -> DetectorState:  # fmt: skip
    """``state`` with the high-score cluster flagged, when the gap statistic finds at least two
    clusters among the window-mean scores of the unflagged clients ``ids`` scored in at least
    ``window`` rounds (three such clients at least). A detection empties every score window:
    the paper restarts training after one, so the remaining clients are judged afresh."""
    judged = ~state.flagged[ids] & (state.count[ids] >= window)
    if int(judged.sum()) < 3:
        return state
    who = ids[judged]
    mean = state.scores[who].mean(1)
    if gap_clusters(mean, generator, k_max, refs) < 2:
        return state
    flagged = state.flagged.clone()
    flagged[who[upper_cluster(mean)]] = True
    return dataclasses.replace(
        state,
        flagged=flagged,
        scores=torch.zeros_like(state.scores),
        count=torch.zeros_like(state.count),
    )


def suspicion(state: DetectorState, ids: Tensor, window: int) -> Tensor:
    """Each client's mean score over its last ``min(count, window)`` scored rounds ``[n]``
    (float64; NaN before its first score)."""
    seen = state.count[ids].clamp_max(window)
    mean = state.scores[ids].sum(1) / seen.clamp_min(1)
    return torch.where(seen > 0, mean, torch.nan)


@dataclass
class FLDetector(Aggregator):
    """FLDetector: detect and exclude clients whose updates are inconsistent with their own
    history, then aggregate the rest with a base rule.

    Each round ``t`` (model ``w_t``, this round's updates ``g_i^t``):

    1. The Hessian-vector product ``H (w_t - w_(t-1))`` is estimated by L-BFGS
       (:func:`lbfgs_hvp`) from the last ``history`` pairs of global model differences and
       global update (aggregate) differences. Each unflagged client that also sent an update
       last round is predicted to send ``g_i^(t-1) + H (w_t - w_(t-1))``; its score this
       round is its distance to the prediction divided by the sum of those distances.
    2. A client's suspicious score is the mean of its last ``window`` scores. Once at least
       three unflagged clients have ``window`` scores, the gap statistic
       (:func:`gap_clusters`, ``k_max`` clusters, ``refs`` uniform reference samples drawn
       from ``ctx.generator``) decides whether their scores form more than one cluster; if so,
       exact 1-D 2-means (:func:`upper_cluster`; the paper's k-means, which needs no seed in
       one dimension) splits them and the higher-score cluster is flagged and excluded from
       then on.
    3. The unflagged clients are aggregated by ``base``: ``mean`` (default), ``median`` or
       ``trimmed_mean``, with ``f`` lowered by the number excluded. The paper pairs the
       detector with FedAvg, the median and the trimmed mean alike (the mean is FedAvg here).

    The model comes from ``ctx.params`` (the flat global model, which the simulator fills);
    where it is None (the Flower deployment, a direct call) the rule uses the negated
    aggregates it returned as the model differences, which are the steps up to the learning
    rate and weight decay (the L-BFGS estimate does not depend on a common scale). In the
    paper the server restarts training once it has detected attackers; here the flagged
    clients are excluded for the rest of the run and every score window starts over. Calling
    the rule again within the same round (``ctx.round`` unchanged) restarts from that round's
    state. Defaults from the paper: ``history = window = 10``; the gap statistic's ``k_max =
    10`` and ``refs = 20`` from the authors' code. Limits: those of the base rule.
    ``accepted``: unflagged clients the base rule accepted; scores ``{"suspicion": the
    window-mean score this round's detection judged (NaN before a client's first score, for
    flagged clients, and after a detection until the next score)}``. The
    state travels through :meth:`state_dict` / :meth:`load_state_dict`.

    References
    ----------
    Z. Zhang, X. Cao, J. Jia, N. Z. Gong. "FLDetector: Defending Federated Learning Against
    Model Poisoning Attacks via Detecting Malicious Clients", KDD 2022 (Algorithm 1).
    """

    name: ClassVar[str] = "fldetector"
    keeps_client_history: ClassVar[bool] = True  # keyed by client id: no regrouping first
    history: int = 10  # N: (model, update) difference pairs behind the L-BFGS estimate
    window: int = 10  # rounds of scores averaged into the suspicious score
    base: BaseRule = "mean"  # rule aggregating the unflagged clients: mean | median | trimmed_mean
    k_max: int = 10  # gap statistic: most clusters tried
    refs: int = 20  # gap statistic: uniform reference samples

    def __post_init__(self) -> None:
        for key in ("history", "window", "refs"):
            if getattr(self, key) < 1:
                raise AggregatorError(f"{self.name}: {key} must be >= 1, got {getattr(self, key)}")
        if self.k_max < 2:
            raise AggregatorError(f"{self.name}: k_max must be >= 2, got {self.k_max}")
        if self.base not in BASE_RULES:
            raise AggregatorError(
                f"{self.name}: base must be one of {', '.join(BASE_RULES)}, got {self.base!r}"
            )
        self.rule = BASE_RULES[self.base]()
        self.state: DetectorState | None = None
        self.start: DetectorState | None = None  # the state before round `self.round`
        self.round: int | None = None

    def check(self, n: int, f: int) -> None:
        super().check(n, f)
        self.rule.check(n, f)

    def aggregate(self, updates: Tensor, ctx: RoundContext) -> Aggregate:
        before = self.start if ctx.round == self.round else self.state
        if before is not None and before.prev.shape[1] != updates.shape[1]:
            raise AggregatorError(
                f"{self.name}: saved state has {before.prev.shape[1]} entries per update, "
                f"updates have {updates.shape[1]}"
            )
        assert ctx.client_ids is not None  # RoundContext.__post_init__ fills it
        ids = ctx.client_ids.to(updates.device).long()
        state = empty_state(self.window, updates) if before is None else before
        state = with_clients(state, int(ids.max()) + 1, updates)
        step = model_step(state, ctx.params)
        state = scored(state, updates, ids, ctx.round, step)
        judged = suspicion(state, ids, self.window)  # what this round's detection sees
        state = detected(state, ids, self.window, ctx.generator, self.k_max, self.refs)
        update, accepted = self.aggregate_kept(updates, ~state.flagged[ids], ctx)
        self.start, self.round = before, ctx.round
        self.state = remembered(
            state, updates, ids, ctx.round, ctx.params, step, update, self.history
        )
        return Aggregate(
            update=update,
            accepted=accepted,
            scores={"suspicion": judged},
        )

    def aggregate_kept(self, updates: Tensor, keep: Tensor, ctx: RoundContext) -> tuple[
        Tensor, Tensor
    ]:  # fmt: skip
        """The base rule on the rows ``keep`` (zeros when none is): update ``[d]``, accepted
        ``[n]``."""
        accepted = torch.zeros(updates.shape[0], dtype=torch.bool, device=updates.device)
        idx = keep.nonzero().flatten()
        if idx.numel() == 0:
            return updates.new_zeros(updates.shape[1]), accepted
        inner = self.rule(updates[idx], ctx.restricted(idx))
        accepted[idx] = inner.accepted
        return inner.update, accepted

    def state_dict(self) -> dict[str, Any]:
        """The detector's state, the state before the last round, and that round."""

        def cpu(state: DetectorState | None) -> dict[str, Tensor | None] | None:
            if state is None:
                return None
            return {k: None if v is None else v.detach().cpu() for k, v in state.tensors().items()}

        return {"state": cpu(self.state), "start": cpu(self.start), "round": self.round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (field names and types are checked)."""
        self.state = restored(state.get("state"))
        self.start = restored(state.get("start"))
        self.round = state.get("round")


def restored(saved: Any) -> DetectorState | None:
    """A :class:`DetectorState` from its saved fields (None stays None); a missing or unknown
    field, or a field that is not a tensor, is an :class:`AggregatorError`."""
    if saved is None:
        return None
    names = {f.name for f in dataclasses.fields(DetectorState)}
    optional = {"last_params", "last_update"}
    if not isinstance(saved, dict) or set(saved) != names:
        got = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
        raise AggregatorError(f"fldetector: saved state must have the fields {sorted(names)}, "
                              f"got {got}")  # fmt: skip
    for key, value in saved.items():
        if not isinstance(value, Tensor) and not (value is None and key in optional):
            raise AggregatorError(f"fldetector: saved state field {key} must be a tensor")
    return DetectorState(**saved)
