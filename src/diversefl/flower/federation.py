"""The Flower server's federation: what :func:`diversefl.engine.runner.train` drives.

:class:`FlowerFederation` satisfies :class:`diversefl.engine.federation.Federation` by
composition: it holds the model (a :class:`~diversefl.engine.params.FlatModel` and the flat
``theta``), the rule, the learning-rate schedule, the Byzantine roles, the uploaded one-time
samples (:class:`~diversefl.flower.samples.SamplePool`) and, if there is one, the test set. It
holds no training set: the one-time samples are the only training examples the server sees
(and, with ``verify-samples``, a :class:`~diversefl.flower.reference.ReferenceData` copy of a
public dataset to check them against).

One round goes one way::

    runner.train --step(r)--> FlowerFederation --exchange(r, theta, roles)--> RoundExchange
        (messages out, replies in, checked)  --Received--> FlowerFederation.apply:
        server_step(theta, rule, updates, ctx, lr, wd) --RoundRecord--> runner

The exchange never calls back into the federation; the federation never talks to the network.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from logging import INFO
from typing import Any

import numpy as np
import torch
from flwr.supercore import log
from torch import Tensor

from diversefl import attacks
from diversefl.aggregators.base import Aggregator
from diversefl.attacks.base import Attack
from diversefl.config import Config
from diversefl.data.preprocess import sample_stats, standardize_tensor
from diversefl.engine.devices import usable_device
from diversefl.engine.gradients import batched_grads
from diversefl.engine.half_guides import half_sample_guides
from diversefl.engine.inputs import build_network
from diversefl.engine.local_training import (
    local_lr,
    local_pseudo_gradients,
    server_step_count,
    step_counts,
    uses_local_training,
)
from diversefl.engine.params import FlatModel
from diversefl.engine.schedules import make_schedule
from diversefl.engine.seeding import generator, seed_for
from diversefl.engine.server_step import make_momentum, server_step
from diversefl.engine.simulator import (
    eval_pass,
    fixed_byzantine_mask,
    metric_summary,
    round_byzantine_mask,
    server_batch_gradient,
    trigger_metrics,
)
from diversefl.flower.common import check_deployable_attack
from diversefl.flower.errors import FederationError
from diversefl.flower.exchange import Received
from diversefl.flower.reference import ReferenceData
from diversefl.flower.samples import Roster, SamplePool
from diversefl.flower.task import TaskFacts, task_facts
from diversefl.flower.testset import TestSet
from diversefl.methods import build_method
from diversefl.protocols.base import Protocol
from diversefl.round import RoundContext, RoundRecord

#: The round function: ``(round, theta, assigned Byzantine mask or None) -> Received``.
Exchange = Callable[[int, Tensor, Tensor | None], Received]


class FlowerFederation:
    """The server's half of a federation whose clients are SuperNodes (see the module doc)."""

    def __init__(
        self,
        cfg: Config,
        test_set: TestSet | None = None,
        reference: ReferenceData | None = None,
        adversary: str = "config",
        facts: TaskFacts | None = None,
    ) -> None:
        self.cfg, self.n, self.adversary = cfg, cfg.clients.n, adversary
        self.reference = reference
        if facts is None and cfg.data.dataset != "files":
            facts = reference.facts if reference is not None else task_facts(cfg.data.dataset)
        self.device = usable_device(cfg.engine.device)
        if self.device.type == "cuda":  # cuDNN's fastest convolution kernels are not repeatable
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        rule = build_method(cfg.aggregator.name, cfg.aggregator.params(), cfg.aggregator.pre)
        if isinstance(rule, Protocol):
            raise ValueError(
                f"aggregator {cfg.aggregator.name!r} is a protocol with client-side model "
                "copies; it is not available over Flower (use a gradient aggregation rule)"
            )
        self.rule: Aggregator = rule
        check_deployable_attack(cfg.attack.name)
        self.attack = attacks.get(cfg.attack.name, **cfg.attack.params())
        self._init_roles()
        self.rule.check(self.n, self.f_assumed)
        self.schedule = make_schedule(
            cfg.optim.schedule, cfg.optim.lr, cfg.optim.milestones, cfg.optim.gamma,
            cfg.optim.warmup_rounds, cfg.optim.warmup_start_lr,
        )  # fmt: skip
        self.momentum = make_momentum(cfg.optim.server_momentum)
        # each partition's local steps (local training; set with the samples), else None
        self.local_steps: Tensor | None = None
        if uses_local_training(cfg):
            local_lr(cfg, self.schedule(1))  # a local step size of 0 is refused now
        self.test_source = test_set
        self.test: TestSet | None = None
        self.facts: TaskFacts | None = None
        if facts is not None:  # own files: the nodes' agreed schema gives them (install)
            self._build(facts)
        self.exchange: Exchange | None = None  # set by the strategy once the samples are in
        # federated evaluation (own files, no server test set): the nodes' held-out rows
        self.remote_eval: Callable[[Tensor], dict[str, float]] | None = None
        self.roster = Roster(self.n)
        self.pool: SamplePool | None = None
        self.sample_over_batch: Tensor | None = None  # per partition, set with the pool
        self.loss_scale = torch.ones(self.n, device=self.device)
        self.reported: set[int] = set()  # partitions that reported (or declared) attacking
        self.faults: list[dict[str, Any]] = []  # rounds with a dropped or rejected update
        self.round_seconds: list[float] = []
        self.round_metrics: dict[int, dict[str, Any]] = {}
        self.sample_review: dict[str, Any] | None = None  # the stored samples' digests
        # standardize = "samples": the pooled uploads' per-feature (mean, std), float64
        self.feature_stats: tuple[np.ndarray, np.ndarray] | None = None

    def _build(self, facts: TaskFacts) -> None:
        """The seeded initial model for the task's shape and classes, and the test set checked
        against them."""
        self.facts = facts
        torch.manual_seed(seed_for(self.cfg.seed, "init"))
        module = build_network(self.cfg, facts.input_shape, facts.num_classes)
        _check_outputs(module, facts, self.cfg.model.factory or self.cfg.model.name)
        self.fm = FlatModel(module.to(self.device))
        self.theta = self.fm.flatten()
        test = self.test_source
        if test is not None:
            test = test.check(facts)
            self.test = TestSet(test.x.to(self.device), test.y.to(self.device), test.source)

    def _init_roles(self) -> None:
        """f, the f the rule assumes, and the fixed Byzantine mask of ``adversary="config"``.

        An attack that picks its clients from the data (the backdoor: the source-class
        owners) needs the server's copy of it to be assigned by the server."""
        picks = type(self.attack).choose_byzantine is not Attack.choose_byzantine
        chosen = None
        if picks and self.reference is not None:
            chosen = self.reference.chosen_byzantine(self.attack)
        elif picks and self.adversary == "config":
            raise ValueError(
                f"attack {self.cfg.attack.name!r} picks its Byzantine clients from the training "
                'data; over Flower use adversary="nodes" (each node declares its attack) or '
                "verify-samples = true (the server holds a copy of the public dataset)"
            )
        self.f = self.cfg.byzantine_count() if chosen is None else len(chosen)
        self.f_assumed = self.cfg.assumed_f(real=self.f)
        self.fixed_byzantine = fixed_byzantine_mask(self.cfg, self.n, self.f, chosen)

    # -- the uploaded samples ---------------------------------------------------------------
    def install(self, roster: Roster, facts: TaskFacts | None = None) -> None:
        """Take the partitions' samples from ``roster`` (what the sample stage collected); a
        partition without one is excluded (no guide, a NaN row every round). ``facts``: the
        task agreed from the nodes' schemas, when the server did not know it before."""
        if not roster.held:
            raise FederationError("no node sent a usable sample")
        if self.facts is None:
            if facts is None:
                raise RuntimeError("FlowerFederation.install: the task's shape is not known")
            self._build(facts)
        self.roster = roster
        self.reported = {j for j, s in roster.held.items() if s.attack != "none"}
        if self.cfg.data.standardize == "samples":  # the pooled uploads' mean / std
            rows = torch.cat([s.x for _, s in sorted(roster.held.items())])
            self.feature_stats = sample_stats(rows)
        self._build_pool()

    def exclude(self, partitions: list[int] | tuple[int, ...], why: str) -> None:
        """Exclude ``partitions`` from every round (e.g. rejected in the sample review)."""
        for j in partitions:
            sample = self.roster.held.pop(j, None)
            if sample is not None:
                self.roster.reasons[j] = f"node {sample.node_id}: {why}"
        if partitions:
            self._build_pool()

    def _build_pool(self) -> None:
        held = self.roster.held
        keyed = self.reference is not None  # verified: training-set indices name the examples
        shape = self._facts().input_shape
        pool = SamplePool.build(held, self.n, shape, self.device, keyed)
        if self.feature_stats is not None:  # the nodes standardise their rows the same way
            x = standardize_tensor(pool.x.reshape(-1, *shape), *self.feature_stats)
            pool = dataclasses.replace(pool, x=x.reshape(pool.x.shape))
        self.pool = pool
        self.sample_over_batch = self._sample_over_batch(pool)
        if uses_local_training(self.cfg):  # the partitions' step counts from what they report
            self.local_steps = self._step_counts(held)
        if self.cfg.clients.loss == "sum":  # the scale follows the batch sizes nodes report
            sizes = {j: float(s.batch_size) for j, s in held.items()}
            if self.reference is not None:  # the server's copy knows every partition's batch
                other = self.reference.batch_sizes(self.cfg)
            else:  # an excluded partition's batch is unknown: the reported mean stands in
                other = [sum(sizes.values()) / len(sizes)] * self.n
            scale = [sizes.get(j, other[j]) for j in range(self.n)]
            self.loss_scale = torch.tensor(scale, device=self.device)

    def _step_counts(self, held: dict[int, Any]) -> Tensor:
        """Local steps ``[n]`` of every partition, from the shard length and batch size its
        node reported with its sample (1 for a partition without a sample)."""
        lens = torch.ones(self.n, dtype=torch.long)
        batch = torch.ones(self.n, dtype=torch.long)
        for j, s in held.items():
            lens[j], batch[j] = int(s.shard_len), int(s.batch_size)
        steps = step_counts(self.cfg, lens, batch)
        steps[[j for j in range(self.n) if j not in held]] = 1
        return steps

    def guiding(self, theta: Tensor, r: int | None = None) -> Tensor:
        """Guiding gradients ``[n, d]`` on the uploaded samples (eq. 6); with local training
        the pseudo-gradients of each partition's local steps on its whole sample at round
        ``r``'s local step size (as the simulator's ``Simulation.guiding``)."""
        pool = self._samples()
        chunk, method = self.cfg.engine.clients_per_chunk or None, self.cfg.engine.grads
        if self.local_steps is None:
            return batched_grads(
                self.fm, theta, pool.x, pool.y, pool.w, chunk, self.loss_scale, method=method
            )
        per_client = "auto" if method == "dense" else method

        def grads_at(models: Tensor, s: int, rows: Tensor | None) -> Tensor:
            sel = slice(None) if rows is None else rows
            x, y, w, scale = pool.x[sel], pool.y[sel], pool.w[sel], self.loss_scale[sel]
            m = method if s == 0 else per_client
            return batched_grads(self.fm, models, x, y, w, chunk, scale, method=m)

        lr = local_lr(self.cfg, self.schedule(_round_of(r, "guiding")))
        return local_pseudo_gradients(theta, grads_at, self.local_steps, lr)

    def guiding_halves(self, theta: Tensor, r: int | None = None) -> Tensor:
        """Guiding gradients ``[2, n, d]`` on the two disjoint halves of each uploaded sample
        (alternate positions in upload order), computed as :meth:`guiding` is: DiverseFL's
        ``min_cosine = "auto"`` (as the simulator's ``Simulation.guiding_halves``)."""
        pool = self._samples()
        lr = None
        if self.local_steps is not None:
            lr = local_lr(self.cfg, self.schedule(_round_of(r, "guiding_halves")))
        return half_sample_guides(
            self.fm, theta, pool.x, pool.y, pool.w, self.loss_scale, self.local_steps, lr,
            self.cfg.engine.clients_per_chunk or None, self.cfg.engine.grads,
        )  # fmt: skip

    def server_gradient(self, theta: Tensor, keys: Tensor, r: int | None = None) -> Tensor:
        """Gradient ``[d]`` on pooled uploaded examples (named by ``keys``, see
        :class:`SamplePool`) on the clients' scale, for rules with server data (FLTrust);
        with local training the pseudo-gradient of the clients' (mean) local steps."""
        x, y = self._samples().examples(keys)
        cfg = self.cfg

        def grad(model: Tensor) -> Tensor:
            return server_batch_gradient(
                self.fm, model, x, y, self.loss_scale, cfg.clients.loss, cfg.engine.grads
            )

        if self.local_steps is None:
            return grad(theta)
        lr = local_lr(cfg, self.schedule(_round_of(r, "server_gradient")))
        steps = torch.tensor([server_step_count(self.local_steps)])

        def grads_at(models: Tensor, s: int, rows: Tensor | None) -> Tensor:
            return grad(models if models.dim() == 1 else models[0])[None]

        return local_pseudo_gradients(theta, grads_at, steps, lr)[0]

    def _facts(self) -> TaskFacts:
        if self.facts is None:
            raise RuntimeError("FlowerFederation: the task's shape is not known yet")
        return self.facts

    def _sample_over_batch(self, pool: SamplePool) -> Tensor:
        """Each partition's uploaded sample size over the batch size its node reported with
        it (0 for a partition without a sample: its halves are unusable anyway)."""
        q = torch.zeros(self.n, dtype=torch.float64)
        sizes = pool.w.detach().cpu().gt(0).sum(dim=1).double()
        for j, s in self.roster.held.items():
            q[j] = sizes[j] / max(1, int(s.batch_size))
        return q

    def _samples(self) -> SamplePool:
        if self.pool is None:
            raise RuntimeError("FlowerFederation: no samples installed yet")
        return self.pool

    # -- rounds -----------------------------------------------------------------------------
    def assigned(self, r: int) -> Tensor | None:
        """The Byzantine mask the server assigns in round r (``adversary="config"``), else
        None (the nodes' own node configs decide)."""
        if self.adversary != "config":
            return None
        return round_byzantine_mask(self.cfg, self.n, self.f, self.fixed_byzantine, r)

    def step(self, r: int) -> RoundRecord:
        """Run round r over the network (the runner's loop calls this)."""
        if self.exchange is None:
            raise RuntimeError("FlowerFederation.step needs an exchange (set by the strategy)")
        t0 = time.perf_counter()
        rec = self.apply(r, self.exchange(r, self.theta, self.assigned(r)))
        self.round_seconds.append(time.perf_counter() - t0)
        return rec

    def apply(self, r: int, got: Received) -> RoundRecord:
        """Step the model with round r's received updates (eq. 11) and record the round."""
        if got.newly_excluded:  # a late second claim: that partition's sample goes too
            self._build_pool()
        assigned = self.assigned(r)
        if assigned is None:
            assigned = torch.tensor([j in self.reported for j in range(self.n)])
        byz = assigned.clone() | got.reported
        self.reported |= set(got.reported.nonzero().flatten().tolist())
        if got.dropped or got.rejected:
            rejected = {str(j): why for j, why in sorted(got.rejected.items())}
            self.faults.append({"round": r, "dropped": got.dropped, "rejected": rejected})
        ctx = self.context(r, byz)
        self.theta, rec = server_step(
            self.theta, self.rule, got.updates.to(self.device), ctx, self.schedule(r),
            self.cfg.optim.weight_decay, self.momentum,
        )  # fmt: skip
        self.round_metrics[r] = {"n-accepted": int(rec.accepted.sum()), **got.counts}
        self.round_metrics[r]["lr"] = float(rec.lr)
        log(INFO, "[ROUND %d/%d] %s", r, self.cfg.rounds, self.round_metrics[r])
        return rec

    def context(self, r: int, byz: Tensor) -> RoundContext:
        """The round context handed to the rule."""
        theta, pool = self.theta, self._samples()
        return RoundContext(
            round=r,
            n=self.n,
            f=self.f_assumed,
            generator=generator(self.cfg.seed, "round", r),
            byzantine=byz.to(self.device),
            guiding_fn=lambda: self.guiding(theta, r),
            guiding_halves_fn=lambda: self.guiding_halves(theta, r),
            sample_over_batch=self.sample_over_batch,
            server_grad_fn=lambda keys: self.server_gradient(theta, keys, r),
            shared_samples=pool.keys,
            layer_sizes=self.fm.layer_sizes,
            num_classes=self._facts().num_classes,
        )

    # -- what the runner reads ----------------------------------------------------------------
    @property
    def n_params(self) -> int:
        """Entries of the flat model."""
        return self.fm.dim

    @property
    def extra_metric_names(self) -> list[str]:
        """The attack's extra metric columns (e.g. backdoor accuracy)."""
        return list(self.attack.metric_names)

    @torch.no_grad()
    def evaluate(self, theta: Tensor | None = None) -> dict[str, float]:
        """Test accuracy and mean cross-entropy of the current (or given) model on the test
        set, plus the attack's metrics (a trigger backdoor's on the triggered test set too);
        NaN for every metric when the server has none, and for the attack's under federated
        evaluation (the nodes report example count, correct predictions and loss only)."""
        theta = self.theta if theta is None else theta
        if self.test is None and self.remote_eval is not None:
            out = {k: math.nan for k in self.extra_metric_names}
            return {**self.remote_eval(theta), **out}
        if self.test is None:
            return {k: math.nan for k in ["test_accuracy", "test_loss", *self.extra_metric_names]}
        preds, loss = eval_pass(self.fm, theta, self.test.x, self.test.y, self.cfg.eval.batch)
        out = {"test_accuracy": float((preds == self.test.y).float().mean()), "test_loss": loss}
        out.update(self.attack.metrics(preds, self.test.y))
        batch = self.cfg.eval.batch
        out.update(trigger_metrics(self.attack, self.fm, theta, self.test.x, self.test.y, batch))
        return out

    def byzantine_ids(self) -> list[int] | str:
        """Byzantine partitions: the config's (``adversary="config"``), or as the nodes
        declared and reported them."""
        if self.adversary == "nodes":
            return sorted(self.reported)
        if self.fixed_byzantine is None:
            return "per_round"
        return self.fixed_byzantine.nonzero().flatten().tolist()

    def extra_summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The attack's extra metrics plus the run's ``flower`` block (nodes, timings, faults)."""
        import flwr

        secs, roster = self.round_seconds, self.roster
        flower = {
            "flwr": flwr.__version__,
            "adversary": self.adversary,
            "verify_samples": self.reference is not None,
            "test_set": self._test_description(),
            "node_ids": ["" if k is None else str(k) for k in roster.node_ids()],
            "sample_sizes": self.pool.sizes if self.pool is not None else [0] * self.n,
            "round_seconds": [round(s, 4) for s in secs],
            "mean_round_seconds": round(sum(secs) / len(secs), 4) if secs else None,
            "excluded": {str(j): why for j, why in sorted(roster.excluded().items())},
            "sample_rejects": {str(k): why for k, why in sorted(roster.rejects.items())},
            "claim_conflicts": {str(j): v for j, v in sorted(roster.conflicts.items())},
            "samples": self.sample_review,
            "faults": self.faults,
            "dropped_total": sum(len(f["dropped"]) for f in self.faults),
            "rejected_total": sum(len(f["rejected"]) for f in self.faults),
        }
        return {**metric_summary(self.attack.metric_names, rows), "flower": flower}

    def _test_description(self) -> str | None:
        if self.test is not None:
            return self.test.source
        return "federated (the nodes' held-out rows)" if self.remote_eval is not None else None

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The model, the rule's state and the server momentum's buffer (all randomness is
        keyed by round)."""
        out = {"theta": self.theta.cpu(), "aggregator": self.rule.state_dict()}
        if self.momentum is not None:
            out["server_momentum"] = self.momentum.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.theta = state["theta"].to(self.device)
        self.rule.load_state_dict(state["aggregator"])
        if self.momentum is not None:
            if "server_momentum" not in state:
                raise ValueError("the checkpoint holds no server momentum buffer")
            self.momentum.load_state_dict(state["server_momentum"], self.theta)


def _round_of(r: int | None, what: str) -> int:
    """The round of a server-side local computation (its local step size), else ValueError."""
    if r is None:
        raise ValueError(f"{what}: with local training give the round r (its local lr)")
    return r


def _check_outputs(module: torch.nn.Module, facts: TaskFacts, name: str) -> None:
    """One logit per class for an example of the task's shape, else ValueError naming the
    model (a user factory that does not fit the agreed schema); torch's random state is kept."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        was = module.training
        try:
            out = module.eval()(torch.zeros(1, *facts.input_shape))
        except (RuntimeError, ValueError, IndexError, TypeError) as err:
            raise ValueError(
                f"model {name!r} does not take examples of shape "
                f"{facts.input_shape}: {str(err).splitlines()[0]}"
            ) from None
        finally:
            module.train(was)
    if tuple(out.shape) != (1, facts.num_classes):
        raise ValueError(
            f"model {name!r} gives outputs of shape {tuple(out.shape)} per example; the task "
            f"has {facts.num_classes} classes"
        )
