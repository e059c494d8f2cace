"""The server side of a Flower federation: a Message-API strategy running any registry aggregator.

:class:`DiverseFLStrategy` first sends every SuperNode a one-time ``query.sample`` message and
keeps each node's sample (keyed by node id), then runs ``config.rounds`` rounds: it sends the
global model, collects one gradient per node, aggregates them with the configured rule (DiverseFL
computes its guiding gradients from the collected samples), steps the model and evaluates it
centrally on the test set. The round loop, metrics and run files are those of ``diversefl run``
(:func:`diversefl.engine.runner.train`), so a Flower run directory holds the same
``config.toml``, ``metrics.csv``, ``decisions.csv`` and ``summary.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from logging import INFO, WARNING
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

from diversefl.config import Config
from diversefl.engine.gradients import batched_grads
from diversefl.engine.runner import RunResult, train
from diversefl.engine.simulator import RoundRecord, Simulation, pad_rows
from diversefl.flower.common import ARRAYS, CONFIG, METRICS, MSG_SAMPLE, config_to_text
from diversefl.results import prepare_run_dir


@dataclass(frozen=True)
class SharedSample:
    """What one node uploaded once before training (kept by the server, keyed by node id)."""

    node_id: int
    partition_id: int
    indices: Tensor  # [s] training-set indices (for checks; the server never reads x_train)
    x: Tensor  # [s, ...] the examples
    y: Tensor  # [s] their labels
    shard_len: int  # how many examples the node holds
    batch_size: int  # its mini-batch size
    attack: str  # the attack its node config declares ("none" when honest)


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
        self.round_fn: Callable[[int], RoundRecord] | None = None
        self.node_ids: list[int] = []
        self.samples: dict[int, SharedSample] = {}
        self.round_seconds: list[float] = []
        self.reported_byzantine: set[int] = set()
        self.adversary = "config"

    # -- samples -------------------------------------------------------------------------
    def _shared_samples(self) -> tuple[Tensor, Tensor]:
        """No samples until the nodes upload them (see :meth:`set_samples`)."""
        return torch.zeros(self.n, 0, dtype=torch.long), torch.zeros(self.n, 0)

    def set_samples(self, samples: dict[int, SharedSample]) -> None:
        """Install the uploaded samples (node id -> sample, one node per partition)."""
        by_part = {s.partition_id: s for s in samples.values()}
        missing = sorted(set(range(self.n)) - set(by_part))
        if missing:
            raise RuntimeError(f"no sample from the nodes holding partitions {missing}")
        self.samples = dict(samples)
        self.node_ids = [by_part[j].node_id for j in range(self.n)]
        rows = [by_part[j] for j in range(self.n)]
        self.sample_idx, lengths = pad_rows([s.indices for s in rows])
        S = self.sample_idx.shape[1]
        self.sample_w = (torch.arange(S)[None, :] < lengths[:, None]).float()
        shape = tuple(rows[0].x.shape[1:])
        self.sample_x = torch.zeros((self.n, S, *shape))
        self.sample_y = torch.zeros(self.n, S, dtype=torch.long)
        for j, s in enumerate(rows):
            self.sample_x[j, : len(s.y)] = s.x
            self.sample_y[j, : len(s.y)] = s.y
        self.sample_x = self.sample_x.to(self.device)
        self.sample_y = self.sample_y.to(self.device)
        # The loss scale follows the batch sizes the nodes report (summed-loss convention).
        if self.cfg.clients.loss == "sum":
            self.loss_scale = torch.tensor([float(s.batch_size) for s in rows], device=self.device)
        # Server-data rules (FLTrust) index the pooled samples by training-set index.
        flat = self.sample_idx[self.sample_w > 0]
        self._pool_pos = torch.full((int(flat.max()) + 1,), -1, dtype=torch.long)
        self._pool_pos[flat] = torch.arange(flat.numel())
        keep = self.sample_w > 0
        self._pool_x = self.sample_x[keep.to(self.device)]
        self._pool_y = self.sample_y[keep.to(self.device)]
        self.reported_byzantine = {s.partition_id for s in rows if s.attack != "none"}

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
        )

    def server_gradient(self, theta: Tensor, idx: Tensor) -> Tensor:
        """Mean-loss gradient ``[d]`` on uploaded examples, named by training-set index."""
        pos = self._pool_pos[idx.cpu()]
        if bool((pos < 0).any()):
            raise ValueError("server_grad_fn: the server only holds the uploaded samples")
        pos = pos.to(self.device)
        w = torch.ones(1, pos.numel(), device=self.device)
        return batched_grads(self.fm, theta, self._pool_x[pos][None], self._pool_y[pos][None], w)[0]

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
        """The attack's extra metrics plus what the Flower run adds (nodes, timings)."""
        import flwr

        out = super().extra_summary(rows)
        secs = self.round_seconds
        out["flower"] = {
            "flwr": flwr.__version__,
            "adversary": self.adversary,
            "node_ids": [str(i) for i in self.node_ids],
            "sample_sizes": [int(w.sum()) for w in self.sample_w],
            "round_seconds": [round(s, 4) for s in secs],
            "mean_round_seconds": round(sum(secs) / len(secs), 4) if secs else None,
        }
        return out


class DiverseFLStrategy(Strategy):
    """A Flower Message-API strategy: one-time sample collection, then robust FedSGD rounds.

    Parameters
    ----------
    cfg:
        The diversefl config (clients.n SuperNodes must be connected).
    data_dir:
        Where the server finds the dataset (for the test set and the model's input shape).
    out:
        The run directory to write (None: no files).
    adversary:
        ``"config"``: the config's ``[attack]`` picks the Byzantine clients each round and the
        server tells them (a simulated adversary, for experiments); ``"nodes"``: each SuperNode's
        node config declares its own attack and the server learns nothing of it.
    timeout:
        Seconds to wait for one round's replies; a node that does not answer sends nothing that
        round (its row is rejected as malformed).
    poll_interval:
        Seconds between polls for replies (Flower's ``send_and_receive`` polls every 3 s).
    max_inflight:
        At most this many messages outstanding at once (0: all at once); see
        :meth:`send_and_receive`.
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
    ) -> None:
        if adversary not in ("config", "nodes"):
            raise ValueError(f"adversary={adversary!r}: allowed: config, nodes")
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
        log(INFO, "\t└──> run directory %s", self.out)

    def configure_sample(self, grid: Grid) -> list[Message]:
        """The one-time ``query.sample`` messages, one per connected node."""
        record = RecordDict({CONFIG: ConfigRecord({"config": self.cfg_text})})
        return [
            Message(content=record, dst_node_id=node, message_type=MSG_SAMPLE)
            for node in grid.get_node_ids()
        ]

    def aggregate_sample(self, replies: Iterable[Message]) -> dict[int, SharedSample]:
        """Keep one sample per partition, keyed by the id of the node that sent it."""
        samples: dict[int, SharedSample] = {}
        seen: set[int] = set()
        for msg in replies:
            if msg.has_error():
                log(
                    WARNING,
                    "sample query failed on node %s: %s",
                    msg.metadata.src_node_id,
                    msg.error.reason,
                )
                continue
            arrays = msg.content[ARRAYS]
            meta = msg.content[CONFIG]
            j = int(meta["partition-id"])
            if j in seen or not 0 <= j < self.cfg.clients.n:
                log(WARNING, "ignoring node %s: partition %d", msg.metadata.src_node_id, j)
                continue
            seen.add(j)
            node = int(msg.metadata.src_node_id)
            samples[node] = SharedSample(
                node_id=node,
                partition_id=j,
                indices=torch.from_numpy(np.array(arrays["idx"].numpy(), dtype=np.int64)),
                x=torch.from_numpy(np.array(arrays["x"].numpy(), dtype=np.float32)),
                y=torch.from_numpy(np.array(arrays["y"].numpy(), dtype=np.int64)),
                shard_len=int(meta["shard-len"]),
                batch_size=int(meta["batch-size"]),
                attack=str(meta["attack"]),
            )
        return samples

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One message per client: the global model plus, with ``adversary="config"``, the
        client's role this round (honest, or Byzantine with the config's attack)."""
        fed = self.federation
        byz = fed.byzantine_mask(server_round) if self.adversary == "config" else None
        ranks = (torch.cumsum(byz.long(), 0) - 1).tolist() if byz is not None else None
        messages = []
        for j, node in enumerate(fed.node_ids):
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
        """Stack the received gradients by partition (missing ones as NaN rows, which every
        rule rejects), aggregate them, step the model; return the new model and round stats."""
        fed = self.federation
        part_of = {node: j for j, node in enumerate(fed.node_ids)}
        updates = torch.full((fed.n, fed.fm.dim), float("nan"))
        if self.adversary == "config":
            byz = fed.byzantine_mask(server_round).clone()
        else:
            byz = torch.zeros(fed.n, dtype=torch.bool)
        failures = 0
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if msg.has_error() or node not in part_of:
                failures += 1
                if msg.has_error():
                    log(
                        WARNING,
                        "round %d: node %d failed: %s",
                        server_round,
                        node,
                        msg.error.reason,
                    )
                continue
            j = part_of[node]
            update = theta_from_record(msg.content[ARRAYS])
            if update.numel() == fed.fm.dim:
                updates[j] = update
            byz[j] = bool(int(msg.content[METRICS]["byzantine"])) or bool(byz[j])
            if byz[j]:
                fed.reported_byzantine.add(j)
        rec = fed.aggregate_round(server_round, updates, byz)
        self._records[server_round] = rec
        metrics = MetricRecord(
            {
                "n-accepted": int(rec.accepted.sum()),
                "n-replies": fed.n - int(torch.isnan(updates[:, 0]).sum()),
                "failures": failures,
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
    def send_and_receive(self, grid: Grid, messages: Iterable[Message]) -> list[Message]:
        """Push ``messages`` and poll for their replies every ``poll_interval`` seconds until
        all arrived or ``timeout`` passed (Flower's own loop sleeps 3 s between polls).

        With ``max_inflight`` > 0 at most that many messages are outstanding at once; the rest
        are pushed as replies come back. On a small machine this keeps Flower from starting
        every node's ClientApp process at once: a process that does not check in within 30 s
        loses its task, which Flower then relaunches, piling up processes.
        """
        queue = list(messages)
        limit = self.max_inflight if self.max_inflight > 0 else max(1, len(queue))
        pending: set[str] = set()
        replies: list[Message] = []
        deadline = time.monotonic() + self.timeout
        delay = self.poll_interval
        while (pending or queue) and time.monotonic() < deadline:
            if queue and len(pending) < limit:
                batch, queue = queue[: limit - len(pending)], queue[limit - len(pending) :]
                pending |= {m for m in grid.push_messages(batch) if m}
            got = list(grid.pull_messages(pending)) if pending else []
            replies.extend(got)
            pending -= {m.metadata.reply_to_message_id for m in got}
            if pending or queue:
                time.sleep(delay)
                delay = min(0.5, delay * 1.5) if not got else self.poll_interval
        if pending or queue:
            log(
                WARNING,
                "%d replies did not arrive within %.0f s",
                len(pending) + len(queue),
                self.timeout,
            )
        return replies

    def wait_for_nodes(self, grid: Grid) -> list[int]:
        """Block until ``clients.n`` nodes are connected (or ``timeout`` passes)."""
        deadline = time.monotonic() + self.timeout
        while True:
            nodes = list(grid.get_node_ids())
            if len(nodes) >= self.cfg.clients.n:
                return nodes
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(nodes)} of {self.cfg.clients.n} SuperNodes connected"
                )
            time.sleep(0.2)

    def collect_samples(self, grid: Grid) -> dict[int, SharedSample]:
        """Send the one-time ``query.sample`` and install what the nodes uploaded."""
        self.wait_for_nodes(grid)
        replies = self.send_and_receive(grid, self.configure_sample(grid))
        self.samples = self.aggregate_sample(replies)
        self.federation.set_samples(self.samples)
        sizes = [int(w.sum()) for w in self.federation.sample_w]
        log(INFO, "collected samples from %d nodes (sizes %s)", len(self.samples), sizes)
        return self.samples

    def _run_round(self, r: int) -> RoundRecord:
        assert self._grid is not None
        fed = self.federation
        messages = self.configure_train(r, theta_record(fed.theta), ConfigRecord(), self._grid)
        replies = self.send_and_receive(self._grid, messages)
        _, metrics = self.aggregate_train(r, replies)
        log(INFO, "[ROUND %d/%d] %s", r, self.cfg.rounds, dict(metrics or {}))
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
        config when given; the other arguments of the base method are not used.
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
        if self.out is not None:
            prepare_run_dir(self.out, resume=False, overwrite=self.overwrite)
        run: RunResult = train(self.cfg, self.out, progress=False, sim=self.federation)
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
