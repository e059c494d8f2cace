"""One simulated federation: state (model, shards, shared samples) plus a round function.
A round is a few large tensor operations over all clients at once, never a loop over clients."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from diversefl import attacks
from diversefl.attacks.base import Attack
from diversefl.config import Config
from diversefl.data.arrays import UserData
from diversefl.data.datasets import Dataset
from diversefl.data.preprocess import sample_stats, standardize_tensor
from diversefl.engine.devices import usable_device
from diversefl.engine.gradients import batched_grads
from diversefl.engine.half_guides import half_sample_guides
from diversefl.engine.inputs import ModelFactory, build_module, client_parts, load_data
from diversefl.engine.local_training import (
    batch_generator,
    local_lr,
    local_pseudo_gradients,
    server_step_count,
    step_counts,
    uses_local_training,
)
from diversefl.engine.params import FlatModel
from diversefl.engine.schedules import make_schedule
from diversefl.engine.seeding import generator, seed_dropout, seed_for
from diversefl.engine.server_step import make_momentum, server_step
from diversefl.methods import build_method
from diversefl.protocols.base import Protocol, ProtocolState
from diversefl.round import RoundContext, RoundRecord

if TYPE_CHECKING:
    from diversefl.aggregators.base import Aggregator


def _count(spec: int | float, length: int) -> int:
    """An int count, or a fraction of ``length`` (at least 1), capped at ``length``."""
    k = spec if isinstance(spec, int) else round(spec * length)
    return max(1, min(int(k), length))


def pad_rows(rows: list[Tensor], fill: int = 0) -> tuple[Tensor, Tensor]:
    """Stack ragged 1-D index tensors into ``[n, L]`` plus their lengths ``[n]``."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.full((len(rows), int(lengths.max())), fill, dtype=torch.long)
    for j, r in enumerate(rows):
        out[j, : len(r)] = r
    return out, lengths


def length_mask(lengths: Tensor, width: int) -> Tensor:
    """``[n, width]`` float mask that is 1 for the first ``lengths[j]`` entries of row j (the
    weights of padded index rows)."""
    return (torch.arange(width)[None, :] < lengths[:, None]).float()


def draw_without_replacement(
    lengths: Tensor, k: Tensor, gen: torch.Generator, width: int
) -> tuple[Tensor, Tensor]:
    """For every row j, ``k[j]`` distinct positions in ``0..lengths[j]-1`` at once.

    Returns positions ``[n, K]`` (K = max k) and a weight mask ``[n, K]`` that is 1 for the
    first ``k[j]`` entries. Row j only depends on row j of one ``[n, width]`` uniform draw.
    """
    n = lengths.shape[0]
    keys = torch.rand(n, width, generator=gen)
    keys[torch.arange(width)[None, :] >= lengths[:, None]] = 2.0  # never pick padding
    K = int(k.max())
    pos = torch.topk(keys, K, dim=1, largest=False, sorted=True).indices
    return pos, length_mask(k, K)


def server_batch_gradient(
    fm: FlatModel,
    theta: Tensor,
    x: Tensor,
    y: Tensor,
    loss_scale: Tensor,
    loss: str,
    method: str = "auto",
) -> Tensor:
    """Gradient ``[d]`` of the mean loss on one server-held batch ``x``, ``y`` (FLTrust's root
    data; the simulator and the Flower server both call it) on the clients' scale
    (:func:`server_loss_scale`)."""
    w = torch.ones(1, y.shape[0], device=x.device)
    g = batched_grads(fm, theta, x[None], y[None], w, method=method)[0]
    return server_loss_scale(g, loss_scale, loss)


def server_loss_scale(grad: Tensor, loss_scale: Tensor, loss: str) -> Tensor:
    """A server-side mean-loss gradient put on the clients' scale.

    With ``clients.loss = "mean"`` it is returned as is. With ``"sum"`` every client sends the
    gradient of its summed loss, m_j times its mean-loss gradient, so the server's gradient is
    multiplied by the clients' mean batch size: the update an honest client with that batch
    would send. FLTrust rescales every accepted update to this gradient's norm; left on the
    mean-loss scale it would shrink every step by a factor m.
    """
    if loss == "sum":
        return grad * loss_scale.mean().to(grad.dtype)
    return grad


def fixed_byzantine_mask(
    cfg: Config, n: int, f: int, chosen: list[int] | None = None
) -> Tensor | None:
    """The run's fixed Byzantine mask ``[n]`` (f clients: ``chosen`` by the attack, the
    config's list plus seeded extras, or a seeded draw), or None when ``attack.byzantine =
    "per_round"`` redraws it every round. Shared by the simulator and the Flower server."""
    spec = cfg.attack.byzantine
    mask = torch.zeros(n, dtype=torch.bool)
    if f == 0:
        return mask
    if chosen is not None:  # the attack decides (backdoor: the source-class owners)
        mask[chosen] = True
        return mask
    if spec == "per_round":
        return None
    seed = cfg.attack.byzantine_seed
    perm = torch.randperm(n, generator=generator(cfg.seed if seed is None else seed, "byzantine"))
    if isinstance(spec, list):
        mask[spec] = True
        extra = [i for i in perm.tolist() if not mask[i]][: cfg.attack.also_seeded]
        mask[extra] = True
        return mask
    mask[perm[:f]] = True
    return mask


def round_byzantine_mask(cfg: Config, n: int, f: int, fixed: Tensor | None, r: int) -> Tensor:
    """Which of the n clients are Byzantine in round r: the ``fixed`` mask, or f clients drawn
    from ``(seed, "byzantine", r)`` when it is redrawn every round."""
    if fixed is not None:
        return fixed
    perm = torch.randperm(n, generator=generator(cfg.seed, "byzantine", r))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[perm[:f]] = True
    return mask


def eval_pass(
    fm: FlatModel, theta: Tensor, x_test: Tensor, y_test: Tensor, batch: int
) -> tuple[Tensor, float]:
    """One pass over a test set in batches of ``batch`` (eval mode: no dropout): predicted
    classes ``[N]`` and the mean cross-entropy. Shared by the simulator and the Flower server."""
    module = fm.module
    module.eval()
    params = fm.unflatten(theta)
    preds, total = [], 0.0
    for start in range(0, x_test.shape[0], batch):
        xb, yb = x_test[start : start + batch], y_test[start : start + batch]
        logits = functional_call(module, (params, fm.buffers), (xb,))
        total += float(F.cross_entropy(logits, yb, reduction="sum"))
        preds.append(logits.argmax(1))
    module.train()
    return torch.cat(preds), total / x_test.shape[0]


def trigger_metrics(
    attack: Attack, fm: FlatModel, theta: Tensor, x_test: Tensor, y_test: Tensor, batch: int
) -> dict[str, float]:
    """The attack's metrics on its triggered copy of the test set (a second test pass), ``{}``
    for an attack without a trigger. Shared by the simulator and the Flower server."""
    triggered = attack.trigger(x_test)
    if triggered is None:
        return {}
    preds, _ = eval_pass(fm, theta, triggered, y_test, batch)
    return attack.trigger_metrics(preds, y_test)


def metric_summary(
    names: list[str] | tuple[str, ...], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """``final_<name>`` and ``max_<name>`` over the metric rows for each extra metric."""
    out: dict[str, Any] = {}
    for name in names:
        values = [float(r[name]) for r in rows if r.get(name) not in (None, "")]
        if values:
            out[f"final_{name}"] = values[-1]
            out[f"max_{name}"] = max(values)
    return out


def warn_capped(cfg: Config, shard_len: Tensor) -> None:
    """Warn when an int ``clients.batch`` / ``clients.sample`` exceeds some clients' shards
    (they are capped at the shard size: those clients use their whole shard)."""
    for key, spec in (
        ("clients.batch", cfg.clients.batch),
        ("clients.sample", cfg.clients.sample),
    ):
        capped = (shard_len < spec).nonzero().flatten().tolist() if isinstance(spec, int) else []
        if capped:
            warnings.warn(
                f"{key}={spec} is larger than the shards of clients {capped[:10]}"
                f"{' ...' if len(capped) > 10 else ''} (smallest "
                f"{int(shard_len[capped].min())} examples): capped at the shard size, "
                "so those clients use their whole shard",
                stacklevel=3,
            )


class Simulation:
    """The simulated federation for one config: build once, then call :meth:`step` per round."""

    def __init__(
        self,
        cfg: Config,
        data_dir: str | None = None,
        dataset: Dataset | UserData | None = None,
        model: ModelFactory | None = None,
    ):
        self.cfg = cfg
        self.device = usable_device(cfg.engine.device)
        if self.device.type == "cuda":  # cuDNN's fastest convolution kernels are not repeatable
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        given = UserData(dataset) if isinstance(dataset, Dataset) else dataset
        given = given or load_data(cfg, data_dir)
        self.data = given.dataset
        n = cfg.clients.n
        self.n = n
        parts = client_parts(cfg, self.data, given.client_parts)
        empty = [j for j, p in enumerate(parts) if len(p) == 0]
        if empty:
            raise ValueError(f"clients {empty} received no training data; use fewer clients")
        self.shards, self.shard_len = pad_rows([torch.as_tensor(p) for p in parts])
        self.batch_k = torch.tensor([_count(cfg.clients.batch, int(L)) for L in self.shard_len])
        self.sample_k = torch.tensor([_count(cfg.clients.sample, int(L)) for L in self.shard_len])
        # the "auto" threshold's batch-noise term: sample size over batch size, per client
        self.sample_over_batch = self.sample_k.double() / self.batch_k.double().clamp_min(1.0)
        warn_capped(cfg, self.shard_len)
        # Loss scale per client: 1 (mean loss) or the client's batch size (summed loss). The
        # guiding gradient uses the same scale, so it estimates what an honest client sends.
        self.loss_scale = (self.batch_k.float() if cfg.clients.loss == "sum" else torch.ones(n)).to(
            self.device
        )

        self.x_train = self.data.x_train.to(self.device)
        self.y_train = self.data.y_train.to(self.device)
        self.x_test = self.data.x_test.to(self.device)
        self.y_test = self.data.y_test.to(self.device)

        torch.manual_seed(seed_for(cfg.seed, "init"))
        module = build_module(cfg, self.data, model)
        self.fm = FlatModel(module.to(self.device))
        self.theta = self.fm.flatten()

        self.aggregator = build_method(
            cfg.aggregator.name, cfg.aggregator.params(), cfg.aggregator.pre
        )
        self.protocol_state: ProtocolState = {}  # a protocol's client-side state (RSA)
        self.attack = attacks.get(cfg.attack.name, **cfg.attack.params())
        chosen = self.attack.choose_byzantine(self.data.y_train.numpy(), parts)
        self.f = cfg.byzantine_count() if chosen is None else len(chosen)
        if chosen is not None and self.f >= n:
            raise ValueError(
                f"attack {cfg.attack.name!r} makes {self.f} of {n} clients Byzantine; "
                "use more clients or another partition"
            )
        # what the defense is told to expect: aggregator.assumed_f, else the real count, or
        # attack.f without an attack
        self.f_assumed = cfg.assumed_f(real=self.f)
        self.aggregator.check(n, self.f_assumed)
        self.fixed_byzantine = self._initial_byzantine(chosen)
        self.schedule = make_schedule(
            cfg.optim.schedule,
            cfg.optim.lr,
            cfg.optim.milestones,
            cfg.optim.gamma,
            cfg.optim.warmup_rounds,
            cfg.optim.warmup_start_lr,
        )
        self._setup_local_training()
        self.sample_idx, self.sample_w = self._shared_samples()
        if cfg.data.standardize == "samples":
            self._standardize_by_samples()
        self._whole_shards = self._gather_whole_shards()

    # -- setup ---------------------------------------------------------------------------
    def _setup_local_training(self) -> None:
        """Each client's local steps per round (``local_steps``; None: FedSGD, one gradient),
        the server momentum (None: the plain step), and their refusals before any round: a
        protocol (RSA's clients keep models of their own) and a local step size of 0."""
        cfg = self.cfg
        local = uses_local_training(cfg)
        self.local_steps = step_counts(cfg, self.shard_len, self.batch_k) if local else None
        self.momentum = make_momentum(cfg.optim.server_momentum)
        if isinstance(self.aggregator, Protocol) and (local or self.momentum is not None):
            given = (
                f"clients.local_steps = {cfg.clients.local_steps}"
                if cfg.clients.local_steps > 1
                else f"clients.local_epochs = {cfg.clients.local_epochs}"
                if local
                else f"optim.server_momentum = {cfg.optim.server_momentum}"
            )
            raise ValueError(
                f"{given}: aggregator {cfg.aggregator.name!r} is a protocol whose clients keep "
                "models of their own; it runs FedSGD rounds only (no local training, no "
                "server momentum)"
            )
        if local:
            local_lr(cfg, self.schedule(1))  # a step size of 0 is refused now, not in round 1

    def _initial_byzantine(self, chosen: list[int] | None = None) -> Tensor | None:
        """The fixed Byzantine mask, or None when it is redrawn every round."""
        return fixed_byzantine_mask(self.cfg, self.n, self.f, chosen)

    def byzantine_mask(self, r: int) -> Tensor:
        """Which clients are Byzantine in round r."""
        return round_byzantine_mask(self.cfg, self.n, self.f, self.fixed_byzantine, r)

    def _shared_samples(self) -> tuple[Tensor, Tensor]:
        """Each client's one-time uniform sample (indices ``[n, S]``, weights ``[n, S]``).

        Client j's sample depends only on (seed, j), so a real client can draw the same one.
        """
        rows = []
        for j in range(self.n):
            L = int(self.shard_len[j])
            perm = torch.randperm(L, generator=generator(self.cfg.seed, "sample", j))
            rows.append(self.shards[j, perm[: int(self.sample_k[j])]])
        idx, lengths = pad_rows(rows)
        return idx, length_mask(lengths, idx.shape[1])

    def _standardize_by_samples(self) -> None:
        """``data.standardize = "samples"``: standardise the features with the mean/std of
        the clients' pooled one-time samples (client by client, in sample order), the
        statistics a deployed server computes from what the nodes upload."""
        rows = self.sample_idx[self.sample_w > 0]
        self.feature_mean, self.feature_std = sample_stats(self.x_train[rows])
        self.x_train = standardize_tensor(self.x_train, self.feature_mean, self.feature_std)
        self.x_test = standardize_tensor(self.x_test, self.feature_mean, self.feature_std)

    def _gather_whole_shards(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """When every client's batch is its whole shard (``clients.batch`` = 1.0, or at least
        the shard size), every round's batch is the same ``[n, L]`` block: gather it once
        instead of every round (at n = 1,000 on MNIST the per-round gather was 60% of a
        round). Costs one batch's worth of memory for the whole run."""
        if not bool((self.batch_k == self.shard_len).all()):
            return None
        x, y = self.gather(self.shards.to(self.device))
        return x, y, length_mask(self.shard_len, self.shards.shape[1]).to(self.device)

    # -- one round -----------------------------------------------------------------------
    def draw_batches(self, r: int, step: int = 0) -> tuple[Tensor, Tensor]:
        """Mini-batch indices ``[n, m]`` into the training set and weights for round r (local
        step ``step``: see :func:`~diversefl.engine.local_training.batch_generator`).

        Whole-shard batches are the shards in their stored order (no draw: a mini-batch gradient
        does not depend on the order of its examples)."""
        if self._whole_shards is not None:
            return self.shards, length_mask(self.shard_len, self.shards.shape[1])
        gen = batch_generator(self.cfg.seed, r, step)
        pos, w = draw_without_replacement(self.shard_len, self.batch_k, gen, self.shards.shape[1])
        return self.shards.gather(1, pos), w

    def batches(
        self, r: int, writable: bool = True, step: int = 0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Round r's training examples ``[n, m, ...]``, labels ``[n, m]`` and weights ``[n, m]``
        (of local step ``step``), on the engine's device. With ``writable`` the caller may
        modify x and y in place (they are copies); without, whole-shard batches are the cached
        tensors themselves."""
        if self._whole_shards is not None:
            x, y, w = self._whole_shards
            return (x.clone(), y.clone(), w) if writable else (x, y, w)
        idx, w = self.draw_batches(r, step)
        x, y = self.gather(idx.to(self.device))
        return x, y, w.to(self.device)

    def gather(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Training examples ``[n, m, ...]`` and labels ``[n, m]`` for an index matrix
        (index_select on the flat index: ~2.5x faster than advanced indexing)."""
        flat = idx.reshape(-1)
        x = self.x_train.index_select(0, flat).view(*idx.shape, *self.x_train.shape[1:])
        return x, self.y_train.index_select(0, flat).view(idx.shape)

    def guiding(self, theta: Tensor, r: int | None = None) -> Tensor:
        """Server-side gradients ``[n, d]`` on each client's shared sample (eq. 6). With local
        training: the pseudo-gradients of each client's local steps, every step on its whole
        sample, at round ``r``'s local step size."""
        x, y = self.gather(self.sample_idx.to(self.device))
        w = self.sample_w.to(self.device)
        chunk = self.cfg.engine.clients_per_chunk or None
        if self.local_steps is None:
            return batched_grads(
                self.fm, theta, x, y, w, chunk, self.loss_scale, method=self.cfg.engine.grads
            )

        def grads_at(models: Tensor, s: int, rows: Tensor | None) -> Tensor:
            sel = slice(None) if rows is None else rows
            method = self.cfg.engine.grads if s == 0 else self._per_client_method
            xs, ys, ws, scale = x[sel], y[sel], w[sel], self.loss_scale[sel]
            return batched_grads(self.fm, models, xs, ys, ws, chunk, scale, method=method)

        lr = local_lr(self.cfg, self.schedule(self._local_round(r, "guiding")))
        return local_pseudo_gradients(theta, grads_at, self.local_steps, lr)

    def guiding_halves(self, theta: Tensor, r: int | None = None) -> Tensor:
        """Guiding gradients ``[2, n, d]`` on the two disjoint halves of each client's shared
        sample (alternate positions of its seeded sample order:
        :func:`~diversefl.engine.half_guides.split_halves`), computed as :meth:`guiding` is
        (with local training, the same local steps): DiverseFL's ``min_cosine = "auto"``."""
        x, y = self.gather(self.sample_idx.to(self.device))
        lr = None
        if self.local_steps is not None:
            lr = local_lr(self.cfg, self.schedule(self._local_round(r, "guiding_halves")))
        return half_sample_guides(
            self.fm, theta, x, y, self.sample_w.to(self.device), self.loss_scale,
            self.local_steps, lr, self.cfg.engine.clients_per_chunk or None,
            self.cfg.engine.grads,
        )  # fmt: skip

    def server_gradient(self, theta: Tensor, idx: Tensor, r: int | None = None) -> Tensor:
        """Gradient ``[d]`` on training examples ``idx`` (server-held data, e.g. FLTrust's root
        data) on the clients' scale: see :func:`server_loss_scale`. With local training: the
        pseudo-gradient of the clients' local steps (their mean count), every step on all of
        ``idx``, at round ``r``'s local step size."""
        idx = idx.to(self.device)
        x, y = self.x_train[idx], self.y_train[idx]
        if self.local_steps is None:
            return server_batch_gradient(
                self.fm, theta, x, y, self.loss_scale, self.cfg.clients.loss, self.cfg.engine.grads
            )

        def grads_at(models: Tensor, s: int, rows: Tensor | None) -> Tensor:
            model = models if models.dim() == 1 else models[0]
            return server_batch_gradient(
                self.fm, model, x, y, self.loss_scale, self.cfg.clients.loss, self.cfg.engine.grads
            )[None]

        lr = local_lr(self.cfg, self.schedule(self._local_round(r, "server_gradient")))
        steps = torch.tensor([server_step_count(self.local_steps)])
        return local_pseudo_gradients(theta, grads_at, steps, lr)[0]

    def _local_round(self, r: int | None, what: str) -> int:
        """The round a server-side local computation belongs to (its local step size)."""
        if r is None:
            raise ValueError(f"{what}: with local training give the round r (its local lr)")
        return r

    @property
    def _per_client_method(self) -> str:
        """``engine.grads`` for one model per client (local steps after the first): the
        hand-written dense backward takes one shared model only, so "dense" becomes "auto"."""
        return "auto" if self.cfg.engine.grads == "dense" else self.cfg.engine.grads

    def context(self, r: int, byz: Tensor) -> RoundContext:
        """The round context handed to the attack and the aggregator."""
        theta = self.theta
        return RoundContext(
            round=r,
            n=self.n,
            f=self.f_assumed,
            generator=generator(self.cfg.seed, "round", r),
            byzantine=byz.to(self.device),
            guiding_fn=lambda: self.guiding(theta, r),
            guiding_halves_fn=lambda: self.guiding_halves(theta, r),
            sample_over_batch=self.sample_over_batch,
            server_grad_fn=lambda idx: self.server_gradient(theta, idx, r),
            shared_samples=self.sample_idx[self.sample_w > 0],
            layer_sizes=self.fm.layer_sizes,
            num_classes=self.data.num_classes,
            params=theta,
        )

    def client_gradients(
        self,
        r: int,
        byz: Tensor,
        ctx: RoundContext,
        theta: Tensor | None = None,
        compute: Tensor | None = None,
    ) -> Tensor:
        """Every client's mini-batch gradient ``[n, d]`` at ``theta`` (global ``[d]`` or one
        model per client ``[n, d]``); Byzantine batches are poisoned by data attacks. With
        ``compute`` (bool ``[n]``) only those clients' rows are wanted and the others are zero
        (:func:`~diversefl.engine.gradients.batched_grads` says when they cost nothing)."""
        seed_dropout(seed_for(self.cfg.seed, "dropout", r), self.device)
        byz_d = byz.to(self.device)
        poisons = bool(byz.any()) and type(self.attack).poison is not Attack.poison
        x, y, w = self.batches(r, writable=poisons)
        if poisons:
            xb, yb = self.attack.poison(x[byz_d], y[byz_d], ctx)
            x[byz_d], y[byz_d] = xb, yb  # writable copies
        theta = self.theta if theta is None else theta
        return batched_grads(
            self.fm,
            theta,
            x,
            y,
            w,
            self.cfg.engine.clients_per_chunk or None,
            self.loss_scale,
            method=self.cfg.engine.grads,
            compute=compute,
        )

    def local_updates(
        self, r: int, byz: Tensor, ctx: RoundContext, compute: Tensor | None = None
    ) -> Tensor:
        """Every client's pseudo-gradient ``[n, d]`` after its local SGD steps in round r
        (FedAvg): step 0 is :meth:`client_gradients`' batch at the global model, step s a fresh
        draw; Byzantine batches are poisoned by data attacks at every step. Clients outside
        ``compute`` take no step and send zeros."""
        assert self.local_steps is not None  # only with local training
        steps = self.local_steps if compute is None else self.local_steps * compute.long()

        def grads_at(models: Tensor, s: int, rows: Tensor | None) -> Tensor:
            if s == 0:
                return self.client_gradients(r, byz, ctx, theta=models, compute=compute)
            return self._local_step_gradients(r, s, byz, ctx, models, rows)

        lr = local_lr(self.cfg, self.schedule(r))
        return local_pseudo_gradients(self.theta, grads_at, steps, lr)

    def _local_step_gradients(
        self, r: int, s: int, byz: Tensor, ctx: RoundContext, models: Tensor, rows: Tensor | None
    ) -> Tensor:
        """Gradients ``[k, d]`` of local step s >= 1 of round r for the clients ``rows`` (None:
        all) at their own models ``[k, d]``, Byzantine batches poisoned by data attacks."""
        seed_dropout(seed_for(self.cfg.seed, "dropout", r, s), self.device)
        poisons = bool(byz.any()) and type(self.attack).poison is not Attack.poison
        x, y, w = self.batches(r, writable=poisons, step=s)
        if poisons:  # all f Byzantine rows at once, as at step 0 (a row's rank may matter)
            byz_d = byz.to(self.device)
            x[byz_d], y[byz_d] = self.attack.poison(x[byz_d], y[byz_d], ctx)
        scale = self.loss_scale
        if rows is not None:  # the clients still stepping
            rows = rows.to(self.device)
            x, y, w, scale = x[rows], y[rows], w[rows], scale[rows]
        chunk = self.cfg.engine.clients_per_chunk or None
        return batched_grads(self.fm, models, x, y, w, chunk, scale, method=self._per_client_method)

    def client_updates(self, r: int, byz: Tensor, ctx: RoundContext) -> Tensor:
        """What every client sends in round r, ``[n, d]`` (attacks applied). For an attack
        that ignores the Byzantine clients' own gradients (``uses_own_gradients = False``)
        they are not asked for: on the dense models (softmax, MLP) that is f/n less gradient
        work, with the honest rows exactly as before."""
        skip = not type(self.attack).uses_own_gradients and bool(byz.any()) and not bool(byz.all())
        compute = ~byz if skip else None
        if self.local_steps is None:
            grads = self.client_gradients(r, byz, ctx, compute=compute)
        else:
            grads = self.local_updates(r, byz, ctx, compute)
        byz_d = byz.to(self.device)
        grads = cast("Aggregator", self.aggregator).prepare(grads, ctx)  # protocols: not here
        if bool(byz.any()):
            # the attackers know how many they are, whatever the defense assumes; their context
            # shares the round's guiding gradients (computed once, the ones the server tests)
            atk_ctx = ctx if ctx.f == self.f else ctx.sharing_guides(f=self.f)
            grads[byz_d] = self.attack(self._honest_rows(grads, byz_d), grads[byz_d], atk_ctx).to(
                grads.dtype
            )
        return grads

    def _honest_rows(self, grads: Tensor, byz: Tensor) -> Tensor:
        """The honest rows the attack sees: a copy, or an empty ``[0, d]`` view for an attack
        that never reads them (``uses_honest_gradients = False``), which saves the copy."""
        return grads[~byz] if type(self.attack).uses_honest_gradients else grads[:0]

    def step(self, r: int) -> RoundRecord:
        """Run round r (1-based): client updates, aggregation, server step (eq. 11)."""
        byz = self.byzantine_mask(r)
        ctx = self.context(r, byz)
        if isinstance(self.aggregator, Protocol):  # a protocol (RSA) runs its own round
            return self._protocol_round(r, byz, ctx)
        updates = self.client_updates(r, byz, ctx)
        self.theta, rec = server_step(
            self.theta, self.aggregator, updates, ctx, self.schedule(r),
            self.cfg.optim.weight_decay, self.momentum,
        )  # fmt: skip
        return rec

    def _protocol_round(self, r: int, byz: Tensor, ctx: RoundContext) -> RoundRecord:
        """One round of a protocol whose clients keep state (RSA's model copies)."""
        byz_d = byz.to(self.device)

        def attack(sent: Tensor) -> Tensor:
            if bool(byz.any()):
                honest = self._honest_rows(sent, byz_d)
                sent[byz_d] = self.attack(honest, sent[byz_d], ctx).to(sent.dtype)
            return sent

        protocol = cast(Protocol, self.aggregator)  # step() sends only protocols here
        if not self.protocol_state:
            self.protocol_state = protocol.initial_state(self.theta, self.n)
        lr = self.schedule(r)
        out = protocol.round(
            self.protocol_state,
            self.theta,
            lr=lr,
            weight_decay=self.cfg.optim.weight_decay,
            client_gradients=lambda models: self.client_gradients(r, byz, ctx, theta=models),
            attack=attack,
        )
        self.theta, self.protocol_state = out.theta, out.state
        return RoundRecord(round=r, lr=lr, byzantine=byz.cpu(), accepted=out.accepted)

    @property
    def n_params(self) -> int:
        """Entries of the flat model."""
        return self.fm.dim

    def byzantine_ids(self) -> list[int] | str:
        """The Byzantine client ids for the run files ("per_round" when redrawn each round)."""
        if self.fixed_byzantine is None:
            return "per_round"
        return self.fixed_byzantine.nonzero().flatten().tolist()

    # -- evaluation ----------------------------------------------------------------------
    @property
    def extra_metric_names(self) -> list[str]:
        """Metric columns beyond the standard ones (the attack's, e.g. backdoor accuracy)."""
        return list(self.attack.metric_names)

    def extra_summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """``final_<metric>`` and ``best_<metric>`` for the attack's extra metrics."""
        return metric_summary(self.attack.metric_names, rows)

    @torch.no_grad()
    def evaluate(self, theta: Tensor | None = None) -> dict[str, float]:
        """Test accuracy and mean cross-entropy of the current (or given) model, plus the
        attack's metrics (on the triggered test set too, for an attack with a trigger)."""
        theta = self.theta if theta is None else theta
        preds, loss = self._test_pass(theta)
        out = {"test_accuracy": float((preds == self.y_test).float().mean()), "test_loss": loss}
        out.update(self.attack.metrics(preds, self.y_test))
        out.update(
            trigger_metrics(
                self.attack, self.fm, theta, self.x_test, self.y_test, self.cfg.eval.batch
            )
        )
        return out

    @torch.no_grad()
    def predict(self, theta: Tensor) -> Tensor:
        """Predicted classes for the whole test set (eval mode: no dropout)."""
        return self._test_pass(theta)[0]

    def _test_pass(self, theta: Tensor) -> tuple[Tensor, float]:
        """One pass over the test set: predicted classes and the mean cross-entropy."""
        return eval_pass(self.fm, theta, self.x_test, self.y_test, self.cfg.eval.batch)

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (all randomness is keyed by round)."""
        if isinstance(self.aggregator, Protocol):
            state = {
                k: None if v is None else v.detach().cpu() for k, v in self.protocol_state.items()
            }
            return {"theta": self.theta.cpu(), "aggregator": state}
        out = {"theta": self.theta.cpu(), "aggregator": self.aggregator.state_dict()}
        attack_state = getattr(self.attack, "state_dict", None)  # e.g. mirrored thresholds
        if callable(attack_state) and attack_state():
            out["attack"] = attack_state()
        if self.momentum is not None:  # the heavy-ball buffer, so a resumed run goes on exactly
            out["server_momentum"] = self.momentum.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.theta = state["theta"].to(self.device)
        if isinstance(self.aggregator, Protocol):  # before the first round: no client state yet
            saved = state["aggregator"] or {}
            self.protocol_state = {} if saved.get("clients") is None else dict(saved)
        else:
            self.aggregator.load_state_dict(state["aggregator"])
        if "attack" in state:
            self.attack.load_state_dict(state["attack"])  # type: ignore[attr-defined]
        if self.momentum is not None:
            if "server_momentum" not in state:
                raise ValueError("the checkpoint holds no server momentum buffer")
            self.momentum.load_state_dict(state["server_momentum"], self.theta)
