"""One client's training data on a node, with the public facts it needs to replay the
simulator's draws (the shard lengths of every client)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class ClientShard:
    """One client's training data plus the public facts it needs to replay the simulator."""

    partition_id: int
    num_partitions: int
    indices: Tensor  # [L] positions of this client's examples in the training set
    x: Tensor  # [L, ...] its examples
    y: Tensor  # [L] its labels
    shard_lens: Tensor  # [n] every client's shard length (public: the batch draw needs it)
    num_classes: int
    input_shape: tuple[int, ...]


def check_partition(partition_id: int, num_partitions: int, clients: int) -> None:
    """A node config's ``partition-id`` / ``num-partitions`` against the run's ``clients.n``
    (ValueError naming the bad value)."""
    if num_partitions != clients:
        raise ValueError(
            f"node config num-partitions={num_partitions} but the run config has "
            f"clients.n={clients}: start one SuperNode per client"
        )
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id={partition_id} outside 0..{num_partitions - 1}")
