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
