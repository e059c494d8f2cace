"""Messages to and from the SuperNodes through a Flower Grid: push, poll, time out.

:class:`Transport` pushes at most ``max_inflight`` messages at a time (the rest wait in a
queue) and polls for replies every ``poll_interval`` seconds (Flower's own
``send_and_receive`` sleeps 3 s between polls). :meth:`Transport.exchange` sends a batch and
waits for its replies up to ``timeout`` (or ``grace`` seconds after a quorum); the sample
stage drives :meth:`~Transport.submit` and :meth:`~Transport.poll` itself, because nodes keep
connecting while it waits.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO, WARNING

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.supercore import log


class Transport:
    """One Grid's message traffic: a queue, the messages in flight and whom they went to."""

    def __init__(
        self, grid: Grid, timeout: float, poll_interval: float = 0.05, max_inflight: int = 0
    ) -> None:
        self.grid = grid
        self.timeout = float(timeout)
        self.poll_interval = float(poll_interval)
        self.max_inflight = int(max_inflight)
        self.queue: list[Message] = []
        self.pending: set[str] = set()
        self.sent: dict[str, int] = {}  # message id -> destination node

    @property
    def busy(self) -> bool:
        """Messages still queued or awaiting a reply."""
        return bool(self.queue or self.pending)

    def submit(self, messages: Iterable[Message]) -> None:
        """Queue ``messages``; :meth:`poll` pushes them as room frees up."""
        self.queue.extend(messages)

    def poll(self) -> list[Message]:
        """Push what the in-flight limit allows, then pull the replies that have arrived.

        With ``max_inflight`` > 0 at most that many messages are outstanding at once. On a
        small machine this keeps Flower from starting every node's ClientApp process at once:
        a process that does not check in within 30 s loses its task, which Flower then
        relaunches, piling up processes."""
        room = self.max_inflight - len(self.pending) if self.max_inflight > 0 else len(self.queue)
        if self.queue and room > 0:
            batch, self.queue = self.queue[:room], self.queue[room:]
            for msg, mid in zip(batch, list(self.grid.push_messages(batch)), strict=False):
                if mid:
                    self.sent[mid] = int(msg.metadata.dst_node_id)
                    self.pending.add(mid)
                else:
                    log(
                        WARNING,
                        "the SuperLink refused a message to node %s",
                        msg.metadata.dst_node_id,
                    )
        got = list(self.grid.pull_messages(self.pending)) if self.pending else []
        self.pending -= {m.metadata.reply_to_message_id for m in got}
        return got

    def abandon(self) -> list[int]:
        """Stop waiting: the nodes whose messages got no reply (queued ones included)."""
        silent = sorted({self.sent[m] for m in self.pending})
        silent += [int(m.metadata.dst_node_id) for m in self.queue]
        self.pending, self.queue = set(), []
        return silent

    def reply_node(self, msg: Message) -> int:
        """The node a reply belongs to: the one its request went to (the SuperLink answers
        for unavailable nodes itself), else its sender."""
        node = self.sent.get(msg.metadata.reply_to_message_id)
        return int(msg.metadata.src_node_id) if node is None else node

    def exchange(
        self, messages: Iterable[Message], quorum: int = 0, grace: float = 0.0
    ) -> list[Message]:
        """Send ``messages`` and wait for their replies until all arrived or ``timeout``
        passed; with ``grace`` > 0, at most ``grace`` seconds once ``quorum`` replies are in."""
        self.submit(messages)
        replies: list[Message] = []
        deadline = time.monotonic() + self.timeout
        quorum_met = False
        delay = self.poll_interval
        while self.busy and time.monotonic() < deadline:
            got = self.poll()
            replies.extend(got)
            if grace > 0 and quorum and not quorum_met and len(replies) >= quorum:
                deadline = min(deadline, time.monotonic() + grace)
                quorum_met = True
            if self.busy:
                time.sleep(delay)
                delay = min(0.5, delay * 1.5) if not got else self.poll_interval
        if self.busy:
            silent = self.abandon()
            log(  # the callers log a WARNING per node
                INFO,
                "%d replies did not arrive within %s (nodes %s)",
                len(silent),
                f"{grace:g} s of the quorum" if quorum_met else f"{self.timeout:g} s",
                ", ".join(str(x) for x in silent),
            )
        return replies
