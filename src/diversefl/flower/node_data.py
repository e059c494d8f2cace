"""A deployed node's own data: the files at its ``data-path`` (``data.dataset = "files"``).

Each hospital (node) holds its data at home and never sees another's. It reads its own file or
image folder exactly as the simulator reads that client's file in the per-client layout: the
same seeded held-out test rows, the same class indices (the run's declared ``data.classes``)
and, for tables, each client's own standardisation (``data.standardize = "client"``), so the
node's training rows equal the simulator's rows of that client. What it reports of its data
before training (:func:`schema`) is what the server's schema agreement compares.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diversefl.config import Config, make_config
from diversefl.data.datasets import DataError
from diversefl.data.files import LoadedFiles
from diversefl.data.preprocess import standardize_tensor
from diversefl.flower.shard import ClientShard, check_partition


@dataclass(frozen=True, eq=False)
class NodeData:
    """A node's training shard (its shard lengths known only for itself until the server sends
    everyone's), its held-out test rows, and the schema it reports."""

    shard: ClientShard
    x_test: Tensor  # [T, ...] float32
    y_test: Tensor  # [T] int64
    classes: tuple[str, ...]
    features: tuple[str, ...]  # table columns in feature order ("" entries: not a table)


def declared_classes(cfg: Config) -> tuple[str, ...]:
    """The run's class names (``data.classes``: names, or a count as "0".."C-1"), or
    ValueError when the config leaves them to be inferred, which a federation cannot do."""
    classes = cfg.data.classes
    if classes is None:
        raise ValueError(
            "data.classes: each node sees only its own labels, so a federation must declare "
            "its classes: set data.classes = ['name', ...] (label names in index order) or a count"
        )
    if isinstance(classes, int):
        return tuple(str(i) for i in range(classes))
    return tuple(str(c) for c in classes)


def own_settings(node_config: dict[str, Any]) -> tuple[str, str | None]:
    """The node config's ``data-path`` (required) and ``test-path`` (optional)."""
    path = str(node_config.get("data-path", "") or "")
    if not path:
        raise ValueError(
            "node config data-path: this run reads each node's own files (data.dataset = "
            "'files'); start the SuperNode with --node-config \"data-path='/path/to/its/data'\""
        )
    test = str(node_config.get("test-path", "") or "") or None
    return path, test


def load_node_data(
    cfg: Config, cfg_text: str, partition_id: int, num_partitions: int, node_config: dict[str, Any]
) -> NodeData:
    """This node's data from its node config's ``data-path`` (see the module docstring)."""
    check_partition(partition_id, num_partitions, cfg.clients.n)
    path, test = own_settings(node_config)
    return _load(cfg_text, partition_id, path, test)


def read_own_files(cfg: Config, path: str, test_path: str | None = None) -> LoadedFiles:
    """One node's file or image folder read as the run's config says (its declared classes,
    its held-out rows, its own standardisation); DataError naming the file when it cannot."""
    from diversefl.data.files import load_files

    classes = declared_classes(cfg)
    d = cfg.data
    if d.standardize in (None, True) and (d.format in ("csv", "parquet") or _is_table(path)):
        raise DataError(
            f"{path}: data.standardize = true (the default for tables) uses the statistics of "
            "every client's rows, which no node holds; set data.standardize = 'samples' (the "
            "statistics of the uploaded samples, sent by the server), 'client' (each node its "
            "own) or false"
        )
    return load_files(
        Path(path).expanduser(),
        fmt=d.format or "auto",
        layout="pool",
        label=d.label or "label",
        test_path=test_path,
        test_fraction=0.2 if d.test_fraction is None else d.test_fraction,
        standardize=d.standardize,
        seed=cfg.seed,
        classes=list(classes),
    )


@functools.lru_cache(maxsize=8)
def _load(cfg_text: str, partition_id: int, path: str, test_path: str | None) -> NodeData:
    cfg = make_config(tomllib.loads(cfg_text))
    loaded = read_own_files(cfg, path, test_path)
    data = loaded.dataset
    L = len(data.y_train)
    lens = torch.zeros(cfg.clients.n, dtype=torch.long)
    lens[partition_id] = L
    shard = ClientShard(
        partition_id=partition_id,
        num_partitions=cfg.clients.n,
        indices=torch.arange(L),
        x=data.x_train,
        y=data.y_train,
        shard_lens=lens,
        num_classes=data.num_classes,
        input_shape=tuple(data.input_shape),
    )
    features = loaded.feature_names or ()
    classes = tuple(data.class_names or declared_classes(cfg))
    return NodeData(shard, data.x_test, data.y_test, classes, tuple(features))


def _is_table(path: str) -> bool:
    return Path(path).suffix.lower() in (".csv", ".parquet", ".pq")


def with_shard_lens(shard: ClientShard, text: str) -> ClientShard:
    """``shard`` with every client's shard length from a train message's ``shard-lens``
    (what the batch draw needs); ValueError when it is malformed or disagrees with the node."""
    try:
        lens = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(
            f"train message shard-lens={text[:80]!r}: not comma-separated counts"
        ) from None
    j, n = shard.partition_id, shard.num_partitions
    if len(lens) != n or min(lens) < 1 or lens[j] != len(shard.y):
        raise ValueError(
            f"train message shard-lens: {len(lens)} counts with entry {j} = "
            f"{lens[j] if j < len(lens) else None}; this node holds {len(shard.y)} of {n} clients"
        )
    return ClientShard(
        partition_id=j,
        num_partitions=n,
        indices=shard.indices,
        x=shard.x,
        y=shard.y,
        shard_lens=torch.tensor(lens, dtype=torch.long),
        num_classes=shard.num_classes,
        input_shape=shard.input_shape,
    )


def parse_stats(message_config: dict[str, Any], width: int) -> tuple[tuple[float, ...], ...] | None:
    """The ``feature-mean`` / ``feature-std`` a message carries (``standardize = "samples"``),
    checked against the node's ``width`` features, or None when it carries none."""
    if "feature-mean" not in message_config:
        return None
    mean = message_config["feature-mean"]
    std: Any = message_config.get("feature-std")  # checked below: a list like mean
    ok = all(
        isinstance(v, list) and len(v) == width and all(isinstance(a, float) for a in v)
        for v in (mean, std)
    )
    if not ok or not all(math.isfinite(a) for a in mean) or not all(b > 0 for b in std):
        raise ValueError(
            f"message feature-mean / feature-std: not {width} finite means and positive stds"
        )
    return tuple(mean), tuple(std)


@functools.lru_cache(maxsize=8)
def _standardized(own: NodeData, stats: tuple[tuple[float, ...], ...]) -> NodeData:
    mean, std = (np.asarray(v, dtype=np.float64) for v in stats)
    shard = dataclasses.replace(own.shard, x=standardize_tensor(own.shard.x, mean, std))
    return dataclasses.replace(own, shard=shard, x_test=standardize_tensor(own.x_test, mean, std))


def standardized(own: NodeData, message_config: dict[str, Any]) -> NodeData:
    """The node's data standardised with the statistics the server sent (unchanged when it
    sent none)."""
    width = own.shard.x.shape[1] if own.shard.x.ndim == 2 else -1
    stats = parse_stats(message_config, width)
    return own if stats is None else _standardized(own, stats)
