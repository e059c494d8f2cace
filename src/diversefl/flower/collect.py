"""The one-time sample stage: every node that connects is asked once for its sample, which
binds it to the partition it claims (see :mod:`diversefl.flower.samples` for the rules).

Before training, :meth:`SampleCollector.run` waits until every expected partition has been
claimed (each partition 0..n-1, or with ``node-partitions`` each bound one) and every queried
node has answered, or until ``timeout``: the count that matters is claims, not connected
nodes, so a rogue node connecting early does not make the run start before the honest ones
are in. During training, :meth:`SampleCollector.admit_late` queries nodes that connected
since: a late claim on a held partition excludes both claimants (a rogue that took the
partition first cannot keep it silently once its owner shows up); a late claim on a partition
nobody held is refused (the run's samples are fixed once training starts). Every refusal is
one WARNING naming the node and listed in ``summary.json`` (``flower.sample_rejects``,
``flower.claim_conflicts``, ``flower.excluded``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from logging import WARNING

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore import log

from diversefl.flower.common import CONFIG, MSG_SAMPLE
from diversefl.flower.reference import ReferenceData
from diversefl.flower.replies import ReplyError, SampleSpec, SharedSample, parse_sample
from diversefl.flower.samples import Roster
from diversefl.flower.schema import Schema, agree, read_schema
from diversefl.flower.transport import Transport

#: Seconds between two looks at the connected nodes while the sample stage waits.
NODE_POLL_SECONDS = 0.2


class SampleCollector:
    """Asks each node once for its sample, checks it and records the claims in a Roster."""

    def __init__(
        self,
        transport: Transport,
        spec: SampleSpec,
        cfg_text: str,
        binding: Mapping[int, int] | None = None,
        reference: ReferenceData | None = None,
        classes: tuple[str, ...] | None = None,
    ) -> None:
        self.transport = transport
        self.spec = spec  # input_shape None: agreed from the nodes' schemas (own files)
        self.classes = classes
        self.schema: Schema | None = None
        self.pending: list[tuple[int, Message]] = []  # replies held until the schema is agreed
        self.cfg_text = cfg_text
        self.binding = None if binding is None else dict(binding)
        self.reference = reference
        self.roster = Roster(spec.num_partitions)
        self.queried: set[int] = set()
        self.answered: set[int] = set()
        self.training = False  # claims after this are late ones

    @property
    def expected(self) -> set[int]:
        """The partitions the run waits for: the bound ones, else all of them."""
        if self.binding is not None:
            return set(self.binding.values())
        return set(range(self.spec.num_partitions))

    def messages(self, nodes: list[int]) -> list[Message]:
        """The one-time ``query.sample`` messages to ``nodes``."""
        record = RecordDict({CONFIG: ConfigRecord({"config": self.cfg_text})})
        return [Message(content=record, dst_node_id=k, message_type=MSG_SAMPLE) for k in nodes]

    def _new_nodes(self) -> list[int]:
        fresh = [int(k) for k in self.transport.grid.get_node_ids() if int(k) not in self.queried]
        self.queried.update(fresh)
        return fresh

    def run(self, timeout: float) -> Roster:
        """Query nodes as they connect until every expected partition is claimed and every
        queried node answered, or ``timeout`` passed (then the silent nodes are refused)."""
        deadline = time.monotonic() + timeout
        next_look, delay = 0.0, self.transport.poll_interval
        while True:
            now = time.monotonic()
            if now >= next_look:
                self.transport.submit(self.messages(self._new_nodes()))
                next_look = now + NODE_POLL_SECONDS
            got = self.transport.poll()
            for msg in got:
                self.take(msg)
            done = self._settled() and not self.transport.busy
            if done or time.monotonic() >= deadline:
                break
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = self.transport.poll_interval if got else min(0.5, delay * 1.5)
        for node in self.transport.abandon():
            self.refuse(node, f"no sample within {timeout:g} s")
        if self.spec.input_shape is None:
            self._agree()
        claimed = len(self.roster.held) + len(self.roster.conflicts)
        if claimed < len(self.expected):
            log(
                WARNING,
                "only %d of %d partitions claimed within %g s (%d nodes connected); going on",
                claimed,
                len(self.expected),
                timeout,
                len(self.queried),
            )
        self.training = True
        return self.roster

    def admit_late(self) -> dict[int, str]:
        """Ask the nodes that connected since the last look for their samples (during
        training); returns the partitions this excluded (partition -> reason)."""
        fresh = self._new_nodes()
        if not fresh:
            return {}
        before = set(self.roster.held)
        for msg in self.transport.exchange(self.messages(fresh)):
            self.take(msg)
        for node in set(fresh) - self.answered:
            why = f"no sample within {self.transport.timeout:g} s (connected during training)"
            self.refuse(node, why)
        return {j: self.roster.reasons[j] for j in before - set(self.roster.held)}

    def take(self, msg: Message) -> None:
        """Check one sample reply and record it: a claim, or a refusal (one WARNING)."""
        node = self.transport.reply_node(msg)
        if node in self.answered:
            log(WARNING, "ignoring a second sample reply from node %s", node)
            return
        self.answered.add(node)
        if self.spec.input_shape is None:  # judged once the schema is agreed
            self.pending.append((node, msg))
            return
        self._admit(node, msg)

    def _settled(self) -> bool:
        """Every expected partition is claimed (while the schema is open: by a held reply)."""
        if self.spec.input_shape is None:
            return self.expected <= {_claimed_partition(m) for _, m in self.pending}
        return self.roster.settled(self.expected)

    def _agree(self) -> None:
        """Agree the schema from the held replies (see :mod:`diversefl.flower.schema`), then
        judge each of them: a node whose schema disagrees is refused, naming the field."""
        reports, unreadable = {}, {}
        for node, msg in self.pending:
            try:
                reports[node] = read_schema(msg)
            except ReplyError as err:
                unreadable[node] = f"invalid sample: {err}"
        schema, reasons = agree(reports, self.classes or ())
        self.schema = schema
        if schema is not None:
            self.spec = dataclasses.replace(
                self.spec, input_shape=schema.input_shape, num_classes=len(schema.classes)
            )
        for node, msg in self.pending:
            why = unreadable.get(node) or reasons.get(node)
            if schema is None and why is None:
                why = "no node's schema has the run's classes and float32 features"
            if why is not None:
                self.refuse(node, why, _claimed_partition(msg))
            else:
                self._admit(node, msg)
        self.pending = []

    def _admit(self, node: int, msg: Message) -> None:
        """Check one reply against the (agreed) spec and record its claim or refusal."""
        sample, why = self._checked(msg, node)
        if sample is None:
            self.refuse(node, why, _claimed_partition(msg))
            return
        j = sample.partition_id
        if self.training and j not in self.roster.held and j not in self.roster.conflicts:
            why = f"claims partition {j} after training started (its samples are fixed)"
            self.refuse(node, why, j)
            return
        claimants = self.roster.claim(sample)
        if claimants:
            nodes = ", ".join(str(k) for k in sorted(claimants))
            newly = claimants if len(claimants) == 2 else [node]
            for k in newly:
                self.refuse(k, f"partition {j} is claimed by nodes {nodes}", j)

    def _checked(self, msg: Message, node: int) -> tuple[SharedSample | None, str]:
        """The reply's sample when it is usable, else None and why not."""
        try:
            sample = dataclasses.replace(parse_sample(msg, self.spec), node_id=node)
        except ReplyError as err:
            return None, f"invalid sample: {err}"
        except Exception as err:  # noqa: BLE001 - a bad reply must never stop the server
            return None, f"unreadable sample: {type(err).__name__}: {err}"
        j = sample.partition_id
        if self.binding is not None and self.binding.get(node) != j:
            bound = self.binding.get(node)
            if bound is None:
                return None, f"node {node} is not in node-partitions"
            return None, (
                f"claims partition {j}, but node-partitions binds node {node} to partition {bound}"
            )
        wrong = self.reference.check(sample) if self.reference is not None else None
        if wrong:
            return None, f"invalid sample: {wrong}"
        return sample, ""

    def refuse(self, node: int, reason: str, partition: int | None = None) -> None:
        """Log (once per refusal) and record why ``node``'s sample is not used."""
        if partition is not None and not 0 <= partition < self.roster.n:
            partition = None
        where = "" if partition is None else f" (partition {partition})"
        log(WARNING, "excluding node %s%s: %s", node, where, reason)
        self.roster.rejects[node] = reason
        if partition is None:
            self.roster.unattributed.append(f"node {node}: {reason}")
        else:
            self.roster.reasons[partition] = f"node {node}: {reason}"


def _claimed_partition(msg: Message) -> int | None:
    """The partition id a (possibly malformed) sample reply claims, when it is readable."""
    try:
        value = msg.content[CONFIG]["partition-id"]
    except Exception:  # noqa: BLE001 - no content, no record, no key: nothing claimed
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
