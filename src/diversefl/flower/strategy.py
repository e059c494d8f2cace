"""The server side of a Flower federation: a Message-API strategy running any registry aggregator.

:class:`DiverseFLStrategy` wires the pieces and runs them; each lives in its own module:

* :mod:`~diversefl.flower.collect`: the one-time sample stage (every node that connects is
  asked once for its sample, which binds it to the partition it claims);
* :mod:`~diversefl.flower.federation`: :class:`FlowerFederation`, what the runner drives
  (model, rule, schedule, the uploaded samples, the optional test set; no training set);
* :mod:`~diversefl.flower.exchange`: :class:`RoundExchange`, one round's messages and replies;
* :mod:`~diversefl.flower.transport`: pushing and polling through Flower's Grid.

The path of a run: :meth:`DiverseFLStrategy.start` collects the samples, installs them in the
federation, gives it the round function and hands it to :func:`diversefl.engine.runner.train`
(the loop, metrics and run files of ``diversefl run``, so a Flower run directory holds the same
``config.toml``, ``metrics.csv``, ``decisions.csv`` and ``summary.json``). Each round then goes
one way: ``train -> FlowerFederation.step(r) -> RoundExchange(r, theta, roles) -> Received ->
FlowerFederation.apply -> server_step``.

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

from collections.abc import Callable, Iterable, Mapping
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore import log

from diversefl.config import Config, load_config, to_toml_dict
from diversefl.engine.runner import RunResult, train
from diversefl.engine.simulator import _count
from diversefl.flower.collect import SampleCollector
from diversefl.flower.common import config_to_text
from diversefl.flower.errors import FederationError
from diversefl.flower.exchange import RoundExchange, theta_from_record, theta_record
from diversefl.flower.federation import FlowerFederation
from diversefl.flower.node_data import declared_classes
from diversefl.flower.reference import ReferenceData
from diversefl.flower.replies import SampleSpec, SharedSample
from diversefl.flower.review import sample_digests, store_samples
from diversefl.flower.task import TaskFacts, task_facts
from diversefl.flower.testset import TestSet, load_test_set, own_files_test_set
from diversefl.flower.transport import Transport
from diversefl.results import prepare_run_dir
from diversefl.review.approval import wait_for_approval

__all__ = [
    "DiverseFLStrategy",
    "FederationError",
    "FlowerFederation",
    "SharedSample",
    "default_min_nodes",
    "theta_from_record",
    "theta_record",
]


#: The most rows a node holding its own files may report (bounds its claimed shard length).
OWN_FILES_MAX_ROWS = 2**31 - 1


def default_min_nodes(n: int) -> int:
    """The default ``min_nodes`` for n clients: a majority, ceil(n / 2)."""
    return max(1, (n + 1) // 2)


def check_binding(
    n: int, node_partitions: Mapping[int, int] | None, node_auth: bool
) -> dict[int, int] | None:
    """The operator's node -> partition binding, checked (partitions in range, each at most
    once); with node authentication it is required: an authenticated node proves who it is,
    and only the binding says which partition that identity holds."""
    if node_partitions is None:
        if node_auth:
            raise ValueError(
                "node-auth = true needs node-partitions (NODE_ID:PARTITION,...): with "
                "authenticated nodes the server binds each node id to its partition"
            )
        return None
    bad = {k: j for k, j in node_partitions.items() if not 0 <= int(j) < n}
    if bad:
        raise ValueError(f"node_partitions {bad}: partitions are 0..{n - 1}")
    parts = list(node_partitions.values())
    if len(set(parts)) != len(parts):
        raise ValueError(f"node_partitions assigns a partition twice: {node_partitions}")
    return {int(k): int(j) for k, j in node_partitions.items()}


class DiverseFLStrategy(Strategy):
    """A Flower Message-API strategy: one-time sample collection, then robust FedSGD rounds.

    Parameters
    ----------
    cfg:
        The diversefl config (clients.n SuperNodes should connect).
    data_dir:
        Where the server finds the test split (and, with ``verify_samples``, the dataset).
    out:
        The run directory to write (None: no files).
    adversary:
        ``"config"``: the config's ``[attack]`` picks the Byzantine clients each round and the
        server tells them (a simulated adversary, for experiments); ``"nodes"``: each SuperNode's
        node config declares its own attack and the server learns nothing of it.
    timeout:
        Seconds to wait for the replies of one round (and for the sample stage); a node that
        does not answer in time is dropped for that round (its row is NaN, so it is rejected).
    poll_interval:
        Seconds between polls for replies (Flower's ``send_and_receive`` polls every 3 s).
    max_inflight:
        At most this many messages outstanding at once (0: all at once).
    min_nodes:
        The fewest usable nodes the run accepts: it refuses to start when fewer nodes sent a
        valid sample, and stops with :class:`FederationError` in the first round with fewer
        valid updates (None or 0: :func:`default_min_nodes`, a majority of ``clients.n``).
    node_partitions:
        ``{node id: partition}``, the operator's binding of registered nodes to partitions
        (None: a node's claim is taken, and a second claim excludes both claimants). A sample
        from a node that is not in it, or that claims another partition, is refused.
    round_grace:
        Seconds a training round still waits once ``min_nodes`` replies are in (0: until
        every node answered or ``timeout``).
    resume:
        Continue the run in ``out`` from its last checkpoint: the samples are collected
        again, the model and the rule's state come from the checkpoint.
    verify_samples:
        Hold each sample to a server-side copy of the public dataset (benchmark federations;
        see :mod:`diversefl.flower.reference`). Off: the server loads no training data.
    test_set:
        A :class:`TestSet`, or the run config's ``test-set`` text (see
        :mod:`diversefl.flower.testset`; None or "": the dataset's test split from
        ``data_dir`` when it is there).
    node_auth:
        The nodes are authenticated (``flower-superlink --enable-supernode-auth``): then
        ``node_partitions`` is required.
    require_approval:
        Wait, after the samples are written to ``out/samples``, for their approval by
        ``diversefl samples OUT --approve``; the partitions it rejects are excluded.
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
        verify_samples: bool = False,
        test_set: TestSet | str | None = None,
        node_auth: bool = False,
        require_approval: bool = False,
    ) -> None:
        n = cfg.clients.n
        self.require_approval = bool(require_approval)
        if adversary not in ("config", "nodes"):
            raise ValueError(f"adversary={adversary!r}: allowed: config, nodes")
        self.min_nodes = int(min_nodes) if min_nodes else default_min_nodes(n)
        if not 1 <= self.min_nodes <= n:
            raise ValueError(f"min_nodes={min_nodes}: must lie in 1..clients.n={n}")
        if not timeout > 0:
            raise ValueError(f"timeout={timeout}: must be positive")
        if not round_grace >= 0:
            raise ValueError(f"round_grace={round_grace}: must be >= 0 (0: off)")
        self.node_partitions = check_binding(n, node_partitions, node_auth)
        self.cfg, self.cfg_text, self.adversary = cfg, config_to_text(cfg), adversary
        self.out = None if out is None or str(out) == "" else Path(out)
        self.timeout, self.poll_interval = float(timeout), float(poll_interval)
        self.max_inflight, self.round_grace = int(max_inflight), float(round_grace)
        self.overwrite, self.resume = overwrite, bool(resume)
        self.own_files = cfg.data.dataset == "files"
        self.classes = declared_classes(cfg) if self.own_files else None
        if self.own_files and verify_samples:
            raise ValueError(
                "verify-samples: the server holds no copy of the nodes' own files "
                "(data.dataset = 'files'); leave it off"
            )
        reference = ReferenceData(cfg, data_dir) if verify_samples else None
        federated = False
        if self.own_files and not isinstance(test_set, TestSet):
            test_set, federated = own_files_test_set(test_set or "")
        elif not isinstance(test_set, TestSet):
            facts = reference.facts if reference is not None else task_facts(cfg.data.dataset)
            test_set = load_test_set(test_set or "", cfg.data.dataset, data_dir, facts)
        self.federated_eval = federated
        self.reference = reference
        self.federation = FlowerFederation(cfg, test_set, reference, adversary)
        self.samples: dict[int, SharedSample] = {}
        self.result: RunResult | None = None
        self._exchange: RoundExchange | None = None

    @property
    def round_metrics(self) -> dict[int, dict[str, Any]]:
        """Round -> that round's counts (``n-valid``, ``dropped``, ``rejected``, ...)."""
        return self.federation.round_metrics

    def sample_spec(self) -> SampleSpec:
        """What a valid sample looks like here: the config's sizes and the dataset's public
        facts (the shard lengths only with the server's copy of the data)."""
        cfg, facts = self.cfg, self.federation.facts
        if facts is None:  # own files: the shape is agreed from the nodes' schemas
            shape, classes, rows = None, len(self.classes or ()), OWN_FILES_MAX_ROWS
        else:
            shape, classes, rows = facts.input_shape, facts.num_classes, facts.train_size
        return SampleSpec(
            num_partitions=cfg.clients.n,
            input_shape=shape,
            num_classes=classes,
            train_size=rows,
            sample_count=lambda length: _count(cfg.clients.sample, length),
            batch_count=lambda length: _count(cfg.clients.batch, length),
            shard_lens=self.reference.shard_lens if self.reference is not None else None,
        )

    # -- Strategy API ----------------------------------------------------------------------
    def summary(self) -> None:
        """Log the strategy's settings."""
        c = self.cfg
        log(INFO, "\t├──> diversefl: %s, %d rounds, %d clients", c.name or "run", c.rounds,
            c.clients.n)  # fmt: skip
        log(INFO, "\t├──> aggregator %s %s", c.aggregator.name, c.aggregator.params())
        log(INFO, "\t├──> attack %s (adversary from %s)", c.attack.name, self.adversary)
        log(INFO, "\t├──> reply timeout %.1f s, min-nodes %d", self.timeout, self.min_nodes)
        log(INFO, "\t├──> samples verified against the server's data: %s", bool(self.reference))
        test = self.federation.test_source
        where = "none (no evaluation)" if test is None else test.source
        if self.federated_eval:
            where = "federated (each node's held-out rows)"
        log(INFO, "\t├──> test set %s", where)
        log(INFO, "\t└──> run directory %s", self.out)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One message per usable client: the global model plus, with ``adversary="config"``,
        the client's role this round (honest, or Byzantine with the config's attack)."""
        assigned = self.federation.assigned(server_round)
        return self._connected(grid).messages(server_round, arrays, assigned, config)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check the received updates, step the model with them (the federation's
        :meth:`~FlowerFederation.apply`) and return the new model and the round's counts.
        A round run by :meth:`start` takes the same path through the federation's step."""
        if self._exchange is None:
            raise RuntimeError("aggregate_train before collect_samples")
        received = self._exchange.collect(server_round, list(replies))
        self.federation.apply(server_round, received)
        metrics = MetricRecord(dict(self.federation.round_metrics[server_round]))
        return theta_record(self.federation.theta), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: the server evaluates centrally on its test set."""
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Nothing to aggregate (central evaluation only)."""
        return None

    # -- the run ----------------------------------------------------------------------------
    def _connected(self, grid: Grid) -> RoundExchange:
        """The round exchange over ``grid`` (made once: it keeps the transport's state)."""
        if self._exchange is None or self._exchange.transport.grid is not grid:
            transport = Transport(grid, self.timeout, self.poll_interval, self.max_inflight)
            collector = SampleCollector(
                transport, self.sample_spec(), self.cfg_text, self.node_partitions,
                self.reference, self.classes,
            )  # fmt: skip
            fed = self.federation
            self._exchange = RoundExchange(
                transport, collector, self.cfg, self.cfg_text,
                fed.n_params if fed.facts is not None else 0, fed.f,
                self.min_nodes, self.round_grace, self.out,
            )  # fmt: skip
        return self._exchange

    def collect_samples(self, grid: Grid) -> dict[int, SharedSample]:
        """Run the sample stage, install the usable samples in the federation and give it the
        round function; raise :class:`FederationError` when fewer than ``min_nodes`` are
        usable. Returns the samples by node id."""
        exchange = self._connected(grid)
        roster = exchange.collector.run(self.timeout)
        n, usable = self.cfg.clients.n, len(roster.held)
        if usable < self.min_nodes:
            why = "; ".join(f"node {k}: {v}" for k, v in sorted(roster.rejects.items()))
            raise FederationError(
                f"only {usable} of {n} nodes sent a usable sample, fewer than "
                f"min-nodes={self.min_nodes}" + (f" ({why})" if why else "")
            )
        schema = exchange.collector.schema
        facts = None
        if schema is not None:
            facts = TaskFacts(schema.input_shape, len(schema.classes), OWN_FILES_MAX_ROWS)
        self.federation.install(roster, facts)
        exchange.dim = self.federation.n_params
        exchange.feature_stats = self.federation.feature_stats
        self.federation.exchange = exchange
        if self.federated_eval:
            self.federation.remote_eval = exchange.evaluate
        self.samples = {s.node_id: s for s in roster.held.values()}
        pool = self.federation.pool
        assert pool is not None  # install() made it
        log(INFO, "collected samples from %d nodes (sizes %s)", usable, pool.sizes)
        if roster.excluded():
            log(INFO, "partitions excluded from every round: %s", sorted(roster.excluded()))
        return self.samples

    def _review_samples(self) -> None:
        """Write the samples for review (``out/samples``) and record their digest; with
        ``require_approval`` wait for the approval and exclude the partitions it rejects."""
        if self.out is None:
            if self.require_approval:
                raise ValueError("require-approval: the samples are reviewed in the run directory")
            return
        fed = self.federation
        schema = self._connected_exchange().collector.schema
        digest = store_samples(self.out, fed.roster, fed.facts, schema)
        review: dict[str, Any] = {
            "manifest_sha256": digest,
            "approval": "not required",
            "rejected": [],
        }
        if self.require_approval:
            approval = wait_for_approval(self.out, log=lambda text: log(INFO, "%s", text))
            fed.exclude(approval.rejected, "rejected in the sample review")
            review = {**review, "approval": approval.time, "rejected": list(approval.rejected)}
        fed.sample_review = {**review, "sha256": sample_digests(self.out)}

    def _connected_exchange(self) -> RoundExchange:
        if self._exchange is None:
            raise RuntimeError("the samples are not collected yet")
        return self._exchange

    def _prepare_out(self) -> bool:
        """Prepare the run directory; True when the run resumes from its checkpoint."""
        if self.out is None:
            return False
        resuming = prepare_run_dir(self.out, resume=self.resume, overwrite=self.overwrite)
        saved = self.out / "config.toml"
        if (
            resuming
            and saved.exists()
            and to_toml_dict(load_config(saved)) != to_toml_dict(self.cfg)
        ):
            raise ValueError(f"resume: the config differs from {saved}")
        return resuming

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
            if self._exchange is not None:
                self._exchange.transport.timeout = self.timeout
        log(INFO, "Starting %s strategy:", type(self).__name__)
        self.summary()
        fed = self.federation
        self.collect_samples(grid)
        if initial_arrays is not None:
            fed.theta = theta_from_record(initial_arrays).to(fed.device)
        resuming = self._prepare_out()
        self._review_samples()
        run = train(self.cfg, self.out, progress=False, sim=fed, resume=resuming)
        result = Result(arrays=theta_record(fed.theta))
        for row in run.metrics:
            values: dict[str, Any] = {
                k: float(row[k])
                for k in ("test_accuracy", "test_loss")
                if row.get(k) not in (None, "")
            }
            result.evaluate_metrics_serverapp[int(row["round"])] = MetricRecord(values)
        log(INFO, "final test accuracy %.4f; run files in %s", run.final_accuracy, self.out)
        self.result = run
        return result
