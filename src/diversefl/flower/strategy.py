"""The server side of a Flower federation: a Message-API strategy running any registry aggregator.

:class:`DiverseFLStrategy` first sends every SuperNode a one-time ``query.sample`` message and
keeps each node's sample (keyed by node id), then runs ``config.rounds`` rounds: it sends the
global model, collects one gradient per node, aggregates them with the configured rule (DiverseFL
computes its guiding gradients from the collected samples), steps the model and evaluates it
centrally on the test set. The round loop, metrics and run files are those of ``diversefl run``
(:func:`diversefl.engine.runner.train`), so a Flower run directory holds the same
``config.toml``, ``metrics.csv``, ``decisions.csv`` and ``summary.json``.

Bad nodes cannot stop the server (see :mod:`diversefl.flower.replies` for the checks): a node
whose sample is missing or malformed is excluded (its partition's row stays NaN, so every rule
rejects it every round, and it is never sent a train message); an update that is malformed is
rejected for that round; a node that does not answer within ``timeout`` is counted as dropped
for that round. Each case is logged once as a WARNING naming the node, counted in the round's
metrics and listed in ``summary.json`` (``flower.excluded``, ``flower.faults``). The run stops
with :class:`FederationError` when fewer than ``min_nodes`` nodes are usable (at the start) or
send a valid update (in a round); the run directory then keeps its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Mapping
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore import log
from torch import Tensor

from diversefl.config import Config, load_config, to_toml_dict
from diversefl.engine.gradients import batched_grads
from diversefl.engine.runner import RunResult, train
from diversefl.engine.simulator import (
    RoundRecord,
    Simulation,
    _count,
    length_mask,
    pad_rows,
    server_batch_gradient,
)
from diversefl.flower.common import (
    ARRAYS,
    CONFIG,
    MSG_SAMPLE,
    check_deployable_attack,
    config_to_text,
)
from diversefl.flower.replies import (
    NODE_UNAVAILABLE,
    ReplyError,
    SampleSpec,
    SharedSample,
    parse_sample,
    parse_update,
)
from diversefl.results import prepare_run_dir

__all__ = [
    "DiverseFLStrategy",
    "FederationError",
    "FlowerFederation",
    "SharedSample",
    "default_min_nodes",
    "theta_from_record",
    "theta_record",
]


class FederationError(RuntimeError):
    """Too few usable nodes: the run cannot start, or cannot go on."""


def default_min_nodes(n: int) -> int:
    """The default ``min_nodes`` for n clients: a majority, ceil(n / 2)."""
    return max(1, (n + 1) // 2)


def theta_record(theta: Tensor) -> ArrayRecord:
    """The flat global model as an ArrayRecord (one float32 array ``theta``)."""
    return ArrayRecord({"theta": Array(theta.detach().cpu().numpy())})


def theta_from_record(record: ArrayRecord) -> Tensor:
    """The flat model (or update) ``[d]`` stored in an ArrayRecord by :func:`theta_record`."""
    return torch.from_numpy(np.array(record["theta"].numpy(), dtype=np.float32, copy=True))


class FlowerFederation(Simulation):
    """The server's half of a :class:`Simulation`: model, aggregator, schedule and test set.

    Client gradients and the one-time samples arrive as messages instead of being computed from
    the training set: :meth:`set_samples` installs the uploaded samples (the guiding gradients
    and server-data rules use them), :meth:`aggregate_round` turns one round's received updates
    into the server step, and :meth:`step` (what the runner calls) asks ``round_fn`` to run a
    round over the network.
    """

    def __init__(self, cfg: Config, data_dir: str | None = None) -> None:
        super().__init__(cfg, data_dir=data_dir)
        if hasattr(self.aggregator, "step"):
            raise ValueError(
                f"aggregator {cfg.aggregator.name!r} is a protocol with client-side model "
                "copies; it is not available over Flower (use a gradient aggregation rule)"
            )
        check_deployable_attack(cfg.attack.name)
        self.round_fn: Callable[[int], RoundRecord] | None = None
        self.node_ids: list[int | None] = []  # per partition; None: excluded
        self.samples: dict[int, SharedSample] = {}
        self.round_seconds: list[float] = []
        self.reported_byzantine: set[int] = set()
        self.adversary = "config"
        self.excluded: dict[int, str] = {}  # partition -> why it has no usable sample
        self.sample_rejects: dict[int, str] = {}  # node id -> why its sample was refused
        self.faults: list[dict[str, Any]] = []  # per round with a dropped or rejected update
        # each partition's seeded sample, as the simulator draws it: what a node must upload
        drawn, weights = Simulation._shared_samples(self)
        self._expected_idx = [drawn[j, : int(weights[j].sum())].clone() for j in range(self.n)]

    # -- samples -------------------------------------------------------------------------
    def _shared_samples(self) -> tuple[Tensor, Tensor]:
        """No samples until the nodes upload them (see :meth:`set_samples`)."""
        return torch.zeros(self.n, 0, dtype=torch.long), torch.zeros(self.n, 0)

    def sample_spec(self) -> SampleSpec:
        """What a valid sample looks like here (shapes, classes, sizes the config asks for)."""
        cfg = self.cfg
        return SampleSpec(
            num_partitions=self.n,
            input_shape=tuple(int(v) for v in self.data.input_shape),
            num_classes=int(self.data.num_classes),
            train_size=int(self.data.y_train.shape[0]),
            sample_count=lambda length: _count(cfg.clients.sample, length),
            batch_count=lambda length: _count(cfg.clients.batch, length),
            shard_lens=tuple(int(v) for v in self.shard_len),
        )

    def check_sample(self, sample: SharedSample) -> str | None:
        """Why an uploaded sample is not its partition's seeded draw of the training set (the
        server holds the dataset: indices, labels and images must be exactly those), or None.

        The guiding gradients (and FLTrust's root data) are computed from these samples, so a
        node free to choose its sample would choose what it is tested against."""
        j = sample.partition_id
        want = self._expected_idx[j]
        if not torch.equal(sample.indices.cpu(), want.cpu()):
            return f"indices are not partition {j}'s sample (the seeded draw of its shard)"
        y = self.data.y_train[want]
        if not torch.equal(sample.y.cpu(), y):
            bad = int((sample.y.cpu() != y).sum())
            return f"labels differ from the training set's at {bad} of {len(y)} examples"
        x = self.data.x_train[want]
        if not torch.allclose(sample.x.cpu(), x, rtol=0.0, atol=1e-6):
            bad = int(((sample.x.cpu() - x).abs().flatten(1).amax(1) > 1e-6).sum())
            return f"images differ from the training set's at {bad} of {len(y)} examples"
        return None

    def set_samples(
        self, samples: Mapping[int, SharedSample], reasons: Mapping[int, str] | None = None
    ) -> None:
        """Install the uploaded samples (node id -> sample, at most one node per partition).

        A partition without a sample is excluded: its sample is empty, it gets no train
        messages and its row of every round's updates stays NaN, which every rule rejects.
        ``reasons`` (partition -> text) says why, for the log and the summary.
        """
        by_part: dict[int, SharedSample] = {}
        for s in samples.values():
            if s.partition_id in by_part or not 0 <= s.partition_id < self.n:
                raise ValueError(
                    f"sample of node {s.node_id}: partition {s.partition_id} "
                    "is outside 0..n-1 or has a second sample"
                )
            by_part[s.partition_id] = s
        if not by_part:
            raise FederationError("no node sent a usable sample")
        reasons = dict(reasons or {})
        self.excluded = {
            j: reasons.get(j, "no node sent a sample for it")
            for j in range(self.n)
            if j not in by_part
        }
        self.samples = dict(samples)
        self.node_ids = [by_part[j].node_id if j in by_part else None for j in range(self.n)]
        shape = tuple(int(v) for v in self.data.input_shape)
        empty = torch.zeros(0, dtype=torch.long)
        self.sample_idx, lengths = pad_rows(
            [by_part[j].indices if j in by_part else empty for j in range(self.n)]
        )
        S = self.sample_idx.shape[1]
        self.sample_w = length_mask(lengths, S)
        self.sample_x = torch.zeros((self.n, S, *shape))
        self.sample_y = torch.zeros(self.n, S, dtype=torch.long)
        for j, s in by_part.items():
            self.sample_x[j, : len(s.y)] = s.x
            self.sample_y[j, : len(s.y)] = s.y
        self.sample_x = self.sample_x.to(self.device)
        self.sample_y = self.sample_y.to(self.device)
        # The loss scale follows the batch sizes the nodes report (summed-loss convention).
        if self.cfg.clients.loss == "sum":
            sizes = [
                float(by_part[j].batch_size) if j in by_part else float(self.batch_k[j])
                for j in range(self.n)
            ]
            self.loss_scale = torch.tensor(sizes, device=self.device)
        # Server-data rules (FLTrust) index the pooled samples by training-set index.
        flat = self.sample_idx[self.sample_w > 0]
        self._pool_pos = torch.full((int(flat.max()) + 1,), -1, dtype=torch.long)
        self._pool_pos[flat] = torch.arange(flat.numel())
        keep = self.sample_w > 0
        self._pool_x = self.sample_x[keep.to(self.device)]
        self._pool_y = self.sample_y[keep.to(self.device)]
        self.reported_byzantine = {j for j, s in by_part.items() if s.attack != "none"}

    def guiding(self, theta: Tensor) -> Tensor:
        """Guiding gradients ``[n, d]`` on the uploaded samples (eq. 6)."""
        return batched_grads(
            self.fm,
            theta,
            self.sample_x,
            self.sample_y,
            self.sample_w.to(self.device),
            self.cfg.engine.clients_per_chunk or None,
            self.loss_scale,
            method=self.cfg.engine.grads,
        )

    def server_gradient(self, theta: Tensor, idx: Tensor) -> Tensor:
        """Gradient ``[d]`` on uploaded examples, named by training-set index, on the clients'
        scale (:func:`diversefl.engine.simulator.server_loss_scale`)."""
        pos = self._pool_pos[idx.cpu()]
        if bool((pos < 0).any()):
            raise ValueError("server_grad_fn: the server only holds the uploaded samples")
        pos = pos.to(self.device)
        return server_batch_gradient(
            self.fm, theta, self._pool_x[pos], self._pool_y[pos], self.loss_scale,
            self.cfg.clients.loss, self.cfg.engine.grads,
        )  # fmt: skip

    # -- rounds --------------------------------------------------------------------------
    def step(self, r: int) -> RoundRecord:
        """Run round r over the network (the runner's loop calls this)."""
        if self.round_fn is None:
            raise RuntimeError("FlowerFederation.step needs round_fn (set by the strategy)")
        t0 = time.perf_counter()
        rec = self.round_fn(r)
        self.round_seconds.append(time.perf_counter() - t0)
        return rec

    def aggregate_round(self, r: int, updates: Tensor, byzantine: Tensor) -> RoundRecord:
        """Aggregate round r's updates ``[n, d]`` (NaN rows: no reply) and step the model."""
        ctx = self.context(r, byzantine)
        agg = self.aggregator(updates.to(self.device), ctx)
        lr = self.schedule(r)
        self.theta = self.theta - lr * (agg.update + self.cfg.optim.weight_decay * self.theta)
        return RoundRecord(
            round=r,
            lr=lr,
            byzantine=byzantine.cpu(),
            accepted=agg.accepted.cpu(),
            scores={k: v.detach().cpu() for k, v in agg.scores.items()},
        )

    def byzantine_ids(self) -> list[int] | str:
        """Byzantine partitions: from the config, or as the nodes declared them."""
        if self.adversary == "nodes":
            return sorted(self.reported_byzantine)
        return super().byzantine_ids()

    def extra_summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The attack's extra metrics plus what the Flower run adds (nodes, timings, faults)."""
        import flwr

        out = super().extra_summary(rows)
        secs = self.round_seconds
        out["flower"] = {
            "flwr": flwr.__version__,
            "adversary": self.adversary,
            "node_ids": ["" if i is None else str(i) for i in self.node_ids],
            "sample_sizes": [int(w.sum()) for w in self.sample_w],
            "round_seconds": [round(s, 4) for s in secs],
            "mean_round_seconds": round(sum(secs) / len(secs), 4) if secs else None,
            "excluded": {str(j): why for j, why in sorted(self.excluded.items())},
            "sample_rejects": {str(k): why for k, why in sorted(self.sample_rejects.items())},
            "faults": self.faults,
            "dropped_total": sum(len(f["dropped"]) for f in self.faults),
            "rejected_total": sum(len(f["rejected"]) for f in self.faults),
        }
        return out


class DiverseFLStrategy(Strategy):
    """A Flower Message-API strategy: one-time sample collection, then robust FedSGD rounds.

    Parameters
    ----------
    cfg:
        The diversefl config (clients.n SuperNodes should be connected).
    data_dir:
        Where the server finds the dataset (for the test set and the model's input shape).
    out:
        The run directory to write (None: no files).
    adversary:
        ``"config"``: the config's ``[attack]`` picks the Byzantine clients each round and the
        server tells them (a simulated adversary, for experiments); ``"nodes"``: each SuperNode's
        node config declares its own attack and the server learns nothing of it.
    timeout:
        Seconds to wait for the replies of one round (and of the sample query); a node that
        does not answer in time is dropped for that round (its row is NaN, so it is rejected).
    poll_interval:
        Seconds between polls for replies (Flower's ``send_and_receive`` polls every 3 s).
    max_inflight:
        At most this many messages outstanding at once (0: all at once); see
        :meth:`send_and_receive`.
    min_nodes:
        The fewest usable nodes the run accepts: it refuses to start when fewer nodes sent a
        valid sample, and stops with :class:`FederationError` in the first round with fewer
        valid updates (None or 0: :func:`default_min_nodes`, a majority of ``clients.n``).
    node_partitions:
        ``{node id: partition}``, the operator's binding of registered nodes to partitions
        (None: a node's claim is taken). A sample from a node that is not in it, or that
        claims another partition, is refused, so a hacked node cannot take over (or, by a
        duplicate claim, knock out) an honest node's partition.
    round_grace:
        Seconds a training round still waits once ``min_nodes`` replies are in (0: until
        every node answered or ``timeout``). A node that stays connected but never answers
        then costs each round this grace, not the whole ``timeout``; the later replies
        count as dropped for that round.
    resume:
        Continue the run in ``out`` from its last checkpoint (after a :class:`FederationError`
        or a crashed server): the samples are collected again, the model and the rule's
        state come from the checkpoint, and the metrics after it are recomputed.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        data_dir: str | None = None,
        out: str | Path | None = None,
        adversary: str = "config",
        timeout: float = 600.0,
        poll_interval: float = 0.05,
        overwrite: bool = False,
        max_inflight: int = 0,
        min_nodes: int | None = None,
        node_partitions: Mapping[int, int] | None = None,
        round_grace: float = 0.0,
        resume: bool = False,
    ) -> None:
        if adversary not in ("config", "nodes"):
            raise ValueError(f"adversary={adversary!r}: allowed: config, nodes")
        n = cfg.clients.n
        self.min_nodes = int(min_nodes) if min_nodes else default_min_nodes(n)
        if not 1 <= self.min_nodes <= n:
            raise ValueError(f"min_nodes={min_nodes}: must lie in 1..clients.n={n}")
        if timeout <= 0:
            raise ValueError(f"timeout={timeout}: must be positive")
        if not round_grace >= 0:
            raise ValueError(f"round_grace={round_grace}: must be >= 0 (0: off)")
        self.round_grace = float(round_grace)
        self.resume = bool(resume)
        if node_partitions is not None:
            bad = {k: j for k, j in node_partitions.items() if not 0 <= int(j) < n}
            if bad:
                raise ValueError(f"node_partitions {bad}: partitions are 0..{n - 1}")
            parts = list(node_partitions.values())
            if len(set(parts)) != len(parts):
                raise ValueError(f"node_partitions assigns a partition twice: {node_partitions}")
        self.node_partitions = None if node_partitions is None else dict(node_partitions)
        self.cfg = cfg
        self.cfg_text = config_to_text(cfg)
        self.out = None if out is None or str(out) == "" else Path(out)
        self.adversary = adversary
        self.timeout = float(timeout)
        self.poll_interval = float(poll_interval)
        self.max_inflight = int(max_inflight)
        self.overwrite = overwrite
        self.federation = FlowerFederation(cfg, data_dir=data_dir)
        self.federation.adversary = adversary
        self.federation.round_fn = self._run_round
        self.samples: dict[int, SharedSample] = {}
        self._grid: Grid | None = None
        self._records: dict[int, RoundRecord] = {}
        self._sent: dict[str, int] = {}  # message id -> destination node (current exchange)
        self.round_metrics: dict[int, dict[str, Any]] = {}  # round -> aggregate_train's counts
        self._partition_reasons: dict[int, str] = {}  # why a partition has no sample
        self._unattributed: list[str] = []  # refused nodes whose partition is unknown

    # -- Strategy API ----------------------------------------------------------------------
    def summary(self) -> None:
        """Log the strategy's settings."""
        c = self.cfg
        log(
            INFO,
            "\t├──> diversefl: %s, %d rounds, %d clients",
            c.name or "run",
            c.rounds,
            c.clients.n,
        )
        log(INFO, "\t├──> aggregator %s %s", c.aggregator.name, c.aggregator.params())
        log(INFO, "\t├──> attack %s (adversary from %s)", c.attack.name, self.adversary)
        log(INFO, "\t├──> reply timeout %.1f s, min-nodes %d", self.timeout, self.min_nodes)
        log(INFO, "\t└──> run directory %s", self.out)

    def configure_sample(self, grid: Grid) -> list[Message]:
        """The one-time ``query.sample`` messages, one per connected node."""
        record = RecordDict({CONFIG: ConfigRecord({"config": self.cfg_text})})
        return [
            Message(content=record, dst_node_id=node, message_type=MSG_SAMPLE)
            for node in grid.get_node_ids()
        ]

    def _reply_node(self, msg: Message) -> int:
        """The node a reply belongs to: the one its request went to (the SuperLink answers
        for unavailable nodes itself), else its sender."""
        node = self._sent.get(msg.metadata.reply_to_message_id)
        return int(msg.metadata.src_node_id) if node is None else node

    def _refuse_sample(self, node: int, reason: str, partition: int | None = None) -> None:
        """Log (once) and record why ``node``'s sample is not used."""
        if partition is not None and not 0 <= partition < self.cfg.clients.n:
            partition = None
        where = "" if partition is None else f" (partition {partition})"
        log(WARNING, "excluding node %s%s: %s", node, where, reason)
        self.federation.sample_rejects[node] = reason
        if partition is None:
            self._unattributed.append(f"node {node}: {reason}")
        else:
            self._partition_reasons[partition] = f"node {node}: {reason}"

    def aggregate_sample(self, replies: Iterable[Message]) -> dict[int, SharedSample]:
        """Check each node's sample; keep one per partition, keyed by the id of its node.

        A missing, errored or malformed sample excludes its node (one WARNING each); when
        several nodes claim the same partition none of them is kept (the server cannot tell
        which one holds it).
        """
        self._partition_reasons = {}
        self._unattributed = []
        spec = self.federation.sample_spec()
        claims: dict[int, list[SharedSample]] = {}
        answered: set[int] = set()
        for msg in replies:
            node = self._reply_node(msg)
            if node in answered:
                log(WARNING, "ignoring a second sample reply from node %s", node)
                continue
            answered.add(node)
            try:
                sample = parse_sample(msg, spec)
            except ReplyError as err:
                self._refuse_sample(node, f"invalid sample: {err}", _claimed_partition(msg))
                continue
            except Exception as err:  # noqa: BLE001 - a bad reply must never stop the server
                reason = f"unreadable sample: {type(err).__name__}: {err}"
                self._refuse_sample(node, reason, _claimed_partition(msg))
                continue
            sample = dataclasses.replace(sample, node_id=node)
            if self.node_partitions is not None:
                bound = self.node_partitions.get(node)
                if bound != sample.partition_id:
                    why = (
                        f"node {node} is not in node-partitions"
                        if bound is None
                        else f"claims partition {sample.partition_id}, but node-partitions "
                        f"binds node {node} to partition {bound}"
                    )
                    self._refuse_sample(node, why, sample.partition_id)
                    continue
            wrong = self.federation.check_sample(sample)
            if wrong:
                self._refuse_sample(node, f"invalid sample: {wrong}", sample.partition_id)
                continue
            claims.setdefault(sample.partition_id, []).append(sample)
        samples: dict[int, SharedSample] = {}
        for j, group in sorted(claims.items()):
            if len(group) == 1:
                samples[group[0].node_id] = group[0]
                continue
            nodes = ", ".join(str(k) for k in sorted(s.node_id for s in group))
            for s in group:
                self._refuse_sample(s.node_id, f"partition {j} is claimed by nodes {nodes}", j)
        return samples

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One message per usable client: the global model plus, with ``adversary="config"``,
        the client's role this round (honest, or Byzantine with the config's attack)."""
        fed = self.federation
        byz = fed.byzantine_mask(server_round) if self.adversary == "config" else None
        ranks = (torch.cumsum(byz.long(), 0) - 1).tolist() if byz is not None else None
        messages = []
        for j, node in enumerate(fed.node_ids):
            if node is None:  # excluded: no usable sample
                continue
            cfg_rec = ConfigRecord(dict(config))
            cfg_rec["config"] = self.cfg_text
            cfg_rec["server-round"] = server_round
            if byz is not None and bool(byz[j]):
                cfg_rec["attack"] = self.cfg.attack.name
                cfg_rec["attack-params"] = json.dumps(self.cfg.attack.params())
                cfg_rec["byzantine-rank"] = int(ranks[j])
                cfg_rec["byzantine-f"] = int(fed.f)
            record = RecordDict({ARRAYS: arrays, CONFIG: cfg_rec})
            messages.append(
                Message(
                    content=record,
                    dst_node_id=node,
                    message_type=MessageType.TRAIN,
                    group_id=str(server_round),
                )
            )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check and stack the received updates by partition, aggregate them, step the model;
        return the new model and the round's counts.

        A partition without a valid update this round keeps a NaN row (every rule rejects
        it): ``dropped`` (no reply, or its node went offline), ``rejected`` (an error reply or
        an update that fails :func:`~diversefl.flower.replies.parse_update`) or ``excluded``
        (no usable sample). Raises :class:`FederationError` before stepping the model when
        fewer than ``min_nodes`` updates are valid.
        """
        fed = self.federation
        r = server_round
        part_of = {node: j for j, node in enumerate(fed.node_ids) if node is not None}
        updates = torch.full((fed.n, fed.fm.dim), float("nan"))
        if self.adversary == "config":
            byz = fed.byzantine_mask(r).clone()
        else:  # what the nodes declared so far: a silent or rejected attacker is still one
            byz = torch.tensor([j in fed.reported_byzantine for j in range(fed.n)])
        answered: set[int] = set()
        rejected: dict[int, str] = {}
        gone: set[int] = set()
        unexpected = 0
        n_replies = 0
        for msg in replies:
            node = self._reply_node(msg)
            j = part_of.get(node)
            if j is None:
                unexpected += 1
                log(WARNING, "round %d: ignoring a reply from node %s (no partition)", r, node)
                continue
            if j in answered:
                log(WARNING, "round %d: ignoring a second reply from node %s", r, node)
                continue
            answered.add(j)
            n_replies += 1
            if msg.has_error() and int(msg.error.code) == NODE_UNAVAILABLE:
                gone.add(j)
                continue
            try:
                got = parse_update(msg, fed.fm.dim, j)
            except Exception as err:  # noqa: BLE001 - ReplyError, or anything unforeseen
                why = str(err) if isinstance(err, ReplyError) else f"{type(err).__name__}: {err}"
                rejected[j] = why
                log(
                    WARNING,
                    "round %d: rejected the update of node %s (partition %d): %s",
                    r,
                    node,
                    j,
                    why,
                )
                continue
            updates[j] = got.update
            byz[j] = got.byzantine or bool(byz[j])
            if byz[j]:
                fed.reported_byzantine.add(j)
        dropped = sorted((set(part_of.values()) - answered) | gone)
        for j in dropped:
            log(
                WARNING,
                "round %d: dropped node %s (partition %d): %s",
                r,
                fed.node_ids[j],
                j,
                "offline (no heartbeat)" if j in gone else f"no reply within {self.timeout:g} s",
            )
        n_valid = len(answered) - len(rejected) - len(gone)
        if dropped or rejected:
            fed.faults.append(
                {
                    "round": r,
                    "dropped": dropped,
                    "rejected": {str(j): why for j, why in sorted(rejected.items())},
                }
            )
        if n_valid < self.min_nodes:
            msg = (
                f"round {r}: only {n_valid} valid updates ({len(dropped)} dropped, "
                f"{len(rejected)} rejected, {len(fed.excluded)} excluded of {fed.n}), fewer "
                f"than min-nodes={self.min_nodes}; stopping"
                + (f" (the last checkpoint in {self.out} is kept)" if self.out else "")
            )
            log(ERROR, "%s", msg)
            raise FederationError(msg)
        rec = fed.aggregate_round(r, updates, byz)
        self._records[r] = rec
        metrics = MetricRecord(
            {
                "n-accepted": int(rec.accepted.sum()),
                "n-replies": n_replies,
                "n-valid": n_valid,
                "dropped": len(dropped),
                "rejected": len(rejected),
                "excluded": len(fed.excluded),
                "unexpected": unexpected,
                "lr": float(rec.lr),
            }
        )
        return theta_record(fed.theta), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: the server evaluates centrally on the test set."""
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Nothing to aggregate (central evaluation only)."""
        return None

    # -- messaging -------------------------------------------------------------------------
    def send_and_receive(
        self, grid: Grid, messages: Iterable[Message], quorum: int = 0, grace: float = 0.0
    ) -> list[Message]:
        """Push ``messages`` and poll for their replies every ``poll_interval`` seconds until
        all arrived or ``timeout`` passed (Flower's own loop sleeps 3 s between polls).

        With ``max_inflight`` > 0 at most that many messages are outstanding at once; the rest
        are pushed as replies come back. On a small machine this keeps Flower from starting
        every node's ClientApp process at once: a process that does not check in within 30 s
        loses its task, which Flower then relaunches, piling up processes.

        With ``grace`` > 0, once ``quorum`` replies have arrived the wait ends at most
        ``grace`` seconds later (never later than ``timeout``).
        """
        queue = list(messages)
        limit = self.max_inflight if self.max_inflight > 0 else max(1, len(queue))
        pending: set[str] = set()
        replies: list[Message] = []
        self._sent = {}
        deadline = time.monotonic() + self.timeout
        quorum_met = False
        delay = self.poll_interval
        while (pending or queue) and time.monotonic() < deadline:
            if queue and len(pending) < limit:
                batch, queue = queue[: limit - len(pending)], queue[limit - len(pending) :]
                ids = list(grid.push_messages(batch))
                for msg, mid in zip(batch, ids, strict=False):
                    if mid:
                        self._sent[mid] = int(msg.metadata.dst_node_id)
                        pending.add(mid)
                    else:
                        log(
                            WARNING,
                            "the SuperLink refused a message to node %s",
                            msg.metadata.dst_node_id,
                        )
            got = list(grid.pull_messages(pending)) if pending else []
            replies.extend(got)
            pending -= {m.metadata.reply_to_message_id for m in got}
            if grace > 0 and quorum and not quorum_met and len(replies) >= quorum:
                deadline = min(deadline, time.monotonic() + grace)
                quorum_met = True
            if pending or queue:
                time.sleep(delay)
                delay = min(0.5, delay * 1.5) if not got else self.poll_interval
        if pending or queue:
            silent = sorted({self._sent[m] for m in pending})
            silent += [int(m.metadata.dst_node_id) for m in queue]
            log(  # the callers log a WARNING per node
                INFO,
                "%d replies did not arrive within %s (nodes %s)",
                len(silent),
                f"{grace:g} s of the quorum" if quorum_met else f"{self.timeout:g} s",
                ", ".join(str(x) for x in silent),
            )
        return replies

    def wait_for_nodes(self, grid: Grid) -> list[int]:
        """Wait up to ``timeout`` for ``clients.n`` connected nodes; go on with fewer (at
        least ``min_nodes``) after that, else raise :class:`FederationError`."""
        deadline = time.monotonic() + self.timeout
        n = self.cfg.clients.n
        while True:
            nodes = list(grid.get_node_ids())
            if len(nodes) >= n:
                return nodes
            if time.monotonic() > deadline:
                if len(nodes) >= self.min_nodes:
                    log(WARNING, "only %d of %d SuperNodes connected; going on", len(nodes), n)
                    return nodes
                raise FederationError(
                    f"only {len(nodes)} of {n} SuperNodes connected within {self.timeout:g} s "
                    f"(min-nodes={self.min_nodes})"
                )
            time.sleep(0.2)

    def collect_samples(self, grid: Grid) -> dict[int, SharedSample]:
        """Send the one-time ``query.sample``, check what the nodes uploaded and install the
        usable samples; raise :class:`FederationError` when fewer than ``min_nodes`` are."""
        self.wait_for_nodes(grid)
        messages = self.configure_sample(grid)
        replies = self.send_and_receive(grid, messages)
        self.samples = self.aggregate_sample(replies)
        answered = {self._reply_node(m) for m in replies}
        for msg in messages:
            node = int(msg.metadata.dst_node_id)
            if node not in answered:
                self._refuse_sample(node, f"no sample within {self.timeout:g} s")
        fed = self.federation
        usable = len(self.samples)
        if usable < self.min_nodes:
            why = "; ".join(f"node {k}: {v}" for k, v in sorted(fed.sample_rejects.items()))
            raise FederationError(
                f"only {usable} of {fed.n} nodes sent a usable sample, fewer than "
                f"min-nodes={self.min_nodes}" + (f" ({why})" if why else "")
            )
        reasons = dict(self._partition_reasons)
        if self._unattributed:  # nodes whose partition is unknown: name them for the others
            missing = set(range(fed.n)) - {s.partition_id for s in self.samples.values()}
            for j in missing - set(reasons):
                reasons[j] = "no usable sample; refused: " + "; ".join(self._unattributed)
        fed.set_samples(self.samples, reasons)
        sizes = [int(w.sum()) for w in fed.sample_w]
        log(INFO, "collected samples from %d nodes (sizes %s)", usable, sizes)
        if fed.excluded:
            log(INFO, "partitions excluded from every round: %s", sorted(fed.excluded))
        return self.samples

    def _run_round(self, r: int) -> RoundRecord:
        assert self._grid is not None
        fed = self.federation
        messages = self.configure_train(r, theta_record(fed.theta), ConfigRecord(), self._grid)
        replies = self.send_and_receive(self._grid, messages, self.min_nodes, self.round_grace)
        _, metrics = self.aggregate_train(r, replies)
        self.round_metrics[r] = dict(metrics or {})
        log(INFO, "[ROUND %d/%d] %s", r, self.cfg.rounds, self.round_metrics[r])
        return self._records.pop(r)

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord | None = None,
        num_rounds: int | None = None,
        timeout: float | None = None,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Collect the samples, run ``cfg.rounds`` rounds through the diversefl runner (which
        evaluates centrally and writes the run directory) and return Flower's Result.

        ``initial_arrays`` replaces the seeded initial model; ``num_rounds`` must match the
        config when given; ``timeout`` replaces the reply timeout; the other arguments of the
        base method are not used.
        """
        if num_rounds is not None and num_rounds != self.cfg.rounds:
            raise ValueError(f"num_rounds={num_rounds} but the config has rounds={self.cfg.rounds}")
        if timeout is not None:
            self.timeout = float(timeout)
        log(INFO, "Starting %s strategy:", type(self).__name__)
        self.summary()
        self._grid = grid
        if initial_arrays is not None:
            self.federation.theta = theta_from_record(initial_arrays).to(self.federation.device)
        self.collect_samples(grid)
        resuming = False
        if self.out is not None:
            resuming = prepare_run_dir(self.out, resume=self.resume, overwrite=self.overwrite)
            saved = self.out / "config.toml"
            if (
                resuming
                and saved.exists()
                and to_toml_dict(load_config(saved)) != to_toml_dict(self.cfg)
            ):
                raise ValueError(f"resume: the config differs from {saved}")
        run: RunResult = train(
            self.cfg, self.out, progress=False, sim=self.federation, resume=resuming
        )
        result = Result(arrays=theta_record(self.federation.theta))
        for row in run.metrics:
            values = {
                k: float(row[k])
                for k in ("test_accuracy", "test_loss")
                if row.get(k) not in (None, "")
            }
            result.evaluate_metrics_serverapp[int(row["round"])] = MetricRecord(values)
        log(INFO, "final test accuracy %.4f; run files in %s", run.final_accuracy, self.out)
        self.result = run
        return result


def _claimed_partition(msg: Message) -> int | None:
    """The partition id a (possibly malformed) sample reply claims, when it is readable."""
    try:
        value = msg.content[CONFIG]["partition-id"]
    except Exception:  # noqa: BLE001 - no content, no record, no key: nothing claimed
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
