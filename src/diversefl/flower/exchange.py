"""One training round over the network: send the model, collect and check the updates.

:class:`RoundExchange` is the round function of a :class:`~diversefl.flower.federation.
FlowerFederation`: called with the round, the model and (``adversary = "config"``) the
Byzantine mask, it first asks nodes that connected since the last round for their samples
(:meth:`SampleCollector.admit_late`), sends one train message to each partition's node,
waits for the replies and returns them as :class:`Received`: the updates by partition (a NaN
row where there is no valid update), what the nodes reported and what went wrong. It never
touches the model or the rule; the federation steps the model with what it returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from logging import ERROR, WARNING
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.supercore import log
from torch import Tensor

from diversefl.config import Config
from diversefl.flower.collect import SampleCollector
from diversefl.flower.common import ARRAYS, CONFIG
from diversefl.flower.errors import FederationError
from diversefl.flower.replies import (
    NODE_UNAVAILABLE,
    ReplyError,
    parse_evaluation,
    parse_update,
)
from diversefl.flower.transport import Transport


def theta_record(theta: Tensor) -> ArrayRecord:
    """The flat global model as an ArrayRecord (one float32 array ``theta``)."""
    return ArrayRecord({"theta": Array(theta.detach().cpu().numpy())})


def theta_from_record(record: ArrayRecord) -> Tensor:
    """The flat model (or update) ``[d]`` stored in an ArrayRecord by :func:`theta_record`."""
    return torch.from_numpy(np.array(record["theta"].numpy(), dtype=np.float32, copy=True))


@dataclass
class Received:
    """One round's replies by partition: what the federation steps the model with."""

    updates: Tensor  # [n, d]; NaN rows: no valid update (dropped, rejected or excluded)
    reported: Tensor  # [n] bool: the nodes whose valid reply said they attacked
    dropped: list[int] = field(default_factory=list)  # partitions without a reply
    rejected: dict[int, str] = field(default_factory=dict)  # partition -> why
    counts: dict[str, int] = field(default_factory=dict)  # the round's metrics
    newly_excluded: dict[int, str] = field(default_factory=dict)  # late second claims


class RoundExchange:
    """Sends a round's train messages and turns the replies into :class:`Received`."""

    def __init__(
        self,
        transport: Transport,
        collector: SampleCollector,
        cfg: Config,
        cfg_text: str,
        dim: int,
        f: int,
        min_nodes: int,
        round_grace: float = 0.0,
        out: Path | None = None,
    ) -> None:
        self.transport = transport
        self.collector = collector
        self.cfg, self.cfg_text = cfg, cfg_text
        self.dim, self.f = dim, f
        self.min_nodes = min_nodes
        self.round_grace = round_grace
        self.out = out
        self.feature_stats: tuple[np.ndarray, np.ndarray] | None = None  # set after install

    def __call__(self, r: int, theta: Tensor, assigned: Tensor | None) -> Received:
        """Round r: late samples, then the train messages and their replies."""
        newly = self.collector.admit_late()
        messages = self.messages(r, theta_record(theta), assigned)
        replies = self.transport.exchange(messages, self.min_nodes, self.round_grace)
        got = self.collect(r, replies)
        got.newly_excluded = newly
        return got

    def messages(
        self,
        r: int,
        arrays: ArrayRecord,
        assigned: Tensor | None,
        config: ConfigRecord | None = None,
    ) -> list[Message]:
        """One message per held partition: the model plus, when the server assigns the roles
        (``assigned`` given), the partition's role this round (honest, or Byzantine with the
        config's attack)."""
        ranks = (torch.cumsum(assigned.long(), 0) - 1).tolist() if assigned is not None else None
        lens = self.shard_lens() if self.cfg.data.dataset == "files" else None
        messages = []
        for j, node in enumerate(self.collector.roster.node_ids()):
            if node is None:  # excluded: no usable sample
                continue
            cfg_rec = ConfigRecord(dict(config or {}))
            cfg_rec["config"] = self.cfg_text
            cfg_rec["server-round"] = r
            if lens is not None:  # nodes with their own files learn the others' lengths here
                cfg_rec["shard-lens"] = lens
            cfg_rec.update(self.stats_record())
            if assigned is not None and bool(assigned[j]):
                assert ranks is not None  # computed whenever assigned is given
                cfg_rec["attack"] = self.cfg.attack.name
                cfg_rec["attack-params"] = json.dumps(self.cfg.attack.params())
                cfg_rec["byzantine-rank"] = int(ranks[j])
                cfg_rec["byzantine-f"] = int(self.f)
            record = RecordDict({ARRAYS: arrays, CONFIG: cfg_rec})
            messages.append(
                Message(
                    content=record,
                    dst_node_id=node,
                    message_type=MessageType.TRAIN,
                    group_id=str(r),
                )  # fmt: skip
            )
        return messages

    def stats_record(self) -> dict[str, list[float]]:
        """``standardize = "samples"``: the statistics every node standardises with."""
        if self.feature_stats is None:
            return {}
        mean, std = self.feature_stats
        return {"feature-mean": [float(v) for v in mean], "feature-std": [float(v) for v in std]}

    def shard_lens(self) -> str:
        """Every partition's shard length as the nodes reported it (1 where excluded), which
        each node needs to draw its mini-batch as the simulator does."""
        held = self.collector.roster.held
        n = self.collector.roster.n
        return ",".join(str(held[j].shard_len if j in held else 1) for j in range(n))

    def evaluate(self, theta: Tensor) -> dict[str, float]:
        """Federated evaluation: each held partition's node evaluates ``theta`` on its own
        held-out rows; the example-weighted accuracy and mean loss over the valid replies
        (NaN when none is valid). Invalid or missing replies are logged and left out."""
        record = theta_record(theta)
        messages = []
        for node in self.collector.roster.node_ids():
            if node is None:
                continue
            cfg_rec = ConfigRecord({"config": self.cfg_text, **self.stats_record()})
            content = RecordDict({ARRAYS: record, CONFIG: cfg_rec})
            messages.append(
                Message(content=content, dst_node_id=node, message_type=MessageType.EVALUATE)
            )
        total = correct = 0
        loss = 0.0
        for msg in self.transport.exchange(messages):
            node = self.transport.reply_node(msg)
            try:
                count, right, loss_sum = parse_evaluation(msg)
            except Exception as err:  # noqa: BLE001 - a bad report must never stop the server
                log(WARNING, "evaluation: ignoring the report of node %s: %s", node, err)
                continue
            total, correct, loss = total + count, correct + right, loss + loss_sum
        if total == 0:
            return {"test_accuracy": float("nan"), "test_loss": float("nan")}
        return {"test_accuracy": correct / total, "test_loss": loss / total}

    def collect(self, r: int, replies: list[Message]) -> Received:
        """Check and stack round r's replies by partition; raise :class:`FederationError`
        when fewer than ``min_nodes`` updates are valid (before the model is stepped)."""
        nodes = self.collector.roster.node_ids()
        part_of = {k: j for j, k in enumerate(nodes) if k is not None}
        n = len(nodes)
        got = Received(torch.full((n, self.dim), float("nan")), torch.zeros(n, dtype=torch.bool))
        answered, gone, unexpected = self._read(r, replies, part_of, got)
        got.dropped = sorted((set(part_of.values()) - answered) | gone)
        for j in got.dropped:
            late = f"no reply within {self.transport.timeout:g} s"
            why = "offline (no heartbeat)" if j in gone else late
            log(WARNING, "round %d: dropped node %s (partition %d): %s", r, nodes[j], j, why)
        n_valid = len(answered) - len(got.rejected) - len(gone)
        got.counts = {
            "n-replies": len(answered),
            "n-valid": n_valid,
            "dropped": len(got.dropped),
            "rejected": len(got.rejected),
            "excluded": n - len(part_of),
            "unexpected": unexpected,
        }
        if n_valid < self.min_nodes:
            msg = (
                f"round {r}: only {n_valid} valid updates ({len(got.dropped)} dropped, "
                f"{len(got.rejected)} rejected, {n - len(part_of)} excluded of {n}), fewer "
                f"than min-nodes={self.min_nodes}; stopping"
                + (f" (the last checkpoint in {self.out} is kept)" if self.out else "")
            )
            log(ERROR, "%s", msg)
            raise FederationError(msg)
        return got

    def _read(
        self, r: int, replies: list[Message], part_of: dict[int, int], got: Received
    ) -> tuple[set[int], set[int], int]:
        """Fill ``got`` from the replies; returns the partitions that answered, those whose
        node is offline, and the number of replies from nodes without a partition."""
        answered: set[int] = set()
        gone: set[int] = set()
        unexpected = 0
        for msg in replies:
            node = self.transport.reply_node(msg)
            j = part_of.get(node)
            if j is None:
                unexpected += 1
                log(WARNING, "round %d: ignoring a reply from node %s (no partition)", r, node)
                continue
            if j in answered:
                log(WARNING, "round %d: ignoring a second reply from node %s", r, node)
                continue
            answered.add(j)
            if msg.has_error() and int(msg.error.code) == NODE_UNAVAILABLE:
                gone.add(j)
                continue
            try:
                update = parse_update(msg, self.dim, j)
            except Exception as err:  # noqa: BLE001 - ReplyError, or anything unforeseen
                why = str(err) if isinstance(err, ReplyError) else f"{type(err).__name__}: {err}"
                got.rejected[j] = why
                log(WARNING, "round %d: rejected the update of node %s (partition %d): %s",
                    r, node, j, why)  # fmt: skip
                continue
            got.updates[j] = update.update
            got.reported[j] = update.byzantine
        return answered, gone, unexpected
