"""``verify-samples``: a server-side copy of a public dataset, for benchmark federations only.

Off by default: a real federation's server has no copy of the nodes' data. In a benchmark
federation (every node holds a partition of a public dataset), the server may load that
dataset, partition it as the nodes do and hold each node to it: an uploaded sample must then
be exactly its partition's seeded draw (indices, labels and images), every node's shard
length is known, and an attack that picks its Byzantine clients from the data (the backdoor's
source-class owners) can be assigned by the server (``adversary = "config"``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diversefl.attacks.base import Attack
from diversefl.config import Config
from diversefl.engine.simulator import _count
from diversefl.flower.common import sample_positions
from diversefl.flower.replies import SharedSample
from diversefl.flower.task import TaskFacts


class ReferenceData:
    """The server's copy of the dataset: each partition's shard and its expected sample."""

    def __init__(self, cfg: Config, data_dir: str | None = None) -> None:
        from diversefl.data.datasets import load_dataset
        from diversefl.data.partition import partition

        data = load_dataset(cfg.data.dataset, data_dir)
        n = cfg.clients.n
        parts = partition(data.y_train, n, cfg.data.partition, seed=cfg.seed, alpha=cfg.data.alpha)
        self._parts = parts
        self._x, self._y = data.x_train, data.y_train
        self.facts = TaskFacts(tuple(data.input_shape), data.num_classes, len(data.y_train))
        self.shard_lens: tuple[int, ...] = tuple(len(p) for p in parts)
        self.expected: list[Tensor] = []  # partition j's sample, as training-set indices
        for j, part in enumerate(parts):
            idx = torch.as_tensor(part, dtype=torch.long)
            self.expected.append(idx[sample_positions(cfg, j, len(part))])

    def batch_sizes(self, cfg: Config) -> list[float]:
        """Every partition's mini-batch size, as the config gives it for its shard."""
        return [float(_count(cfg.clients.batch, L)) for L in self.shard_lens]

    def chosen_byzantine(self, attack: Attack) -> list[int] | None:
        """The clients ``attack`` makes Byzantine from the data (None: the config decides)."""
        return attack.choose_byzantine(self._y.numpy(), self._parts)

    def check(self, sample: SharedSample) -> str | None:
        """Why an uploaded sample is not its partition's seeded draw of the training set
        (indices, labels and images must be exactly those), or None.

        The guiding gradients (and FLTrust's root data) are computed from these samples, so a
        node free to choose its sample would choose what it is tested against."""
        j = sample.partition_id
        want = self.expected[j]
        if not torch.equal(sample.indices.cpu(), want):
            return f"indices are not partition {j}'s sample (the seeded draw of its shard)"
        y = self._y[want]
        if not torch.equal(sample.y.cpu(), y):
            bad = int((sample.y.cpu() != y).sum())
            return f"labels differ from the training set's at {bad} of {len(y)} examples"
        x = self._x[want]
        if not torch.allclose(sample.x.cpu(), x, rtol=0.0, atol=1e-6):
            bad = int(((sample.x.cpu() - x).abs().flatten(1).amax(1) > 1e-6).sum())
            return f"images differ from the training set's at {bad} of {len(y)} examples"
        return None
