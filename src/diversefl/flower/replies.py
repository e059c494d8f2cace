"""Checks on what the nodes send: the one-time sample and each round's update.

Every reply is untrusted. :func:`parse_sample` and :func:`parse_update` either return what the
server will use or raise :class:`ReplyError` with one short reason (e.g. ``"x has dtype
float64, expected float32"``); the strategy logs it, naming the node, and excludes the sample
or rejects the update. Sizes are checked on the arrays' metadata and byte counts before
anything is decoded, so an oversized reply is refused without being turned into a tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from torch import Tensor

from diversefl.aggregators.base import MAX_ABS
from diversefl.flower.common import ARRAYS, CONFIG, METRICS

#: Error code of the replies the SuperLink makes up for a node that stopped sending heartbeats
#: (``flwr.common.constant.ErrorCode.NODE_UNAVAILABLE``): the node is gone, not misbehaving.
NODE_UNAVAILABLE = 5
#: Bytes of slack over the exact payload size (the ``.npy`` header of each array, metrics).
SLACK_BYTES = 64 * 1024


class ReplyError(ValueError):
    """A node's reply that the server cannot use (the message says why)."""


@dataclass(frozen=True)
class SharedSample:
    """What one node uploaded once before training (kept by the server, keyed by node id)."""

    node_id: int
    partition_id: int
    # [s] the training-set indices the node reports: plausible ids (distinct, in range); held
    # to the server's copy of the data only with verify-samples
    indices: Tensor
    x: Tensor  # [s, ...] the examples
    y: Tensor  # [s] their labels
    shard_len: int  # how many examples the node holds
    batch_size: int  # its mini-batch size
    attack: str  # the attack its node config declares ("none" when honest)


@dataclass(frozen=True)
class SampleSpec:
    """What a valid sample looks like for this run (from the config and the dataset's public
    facts; the shard lengths only when the server holds a copy of the data)."""

    num_partitions: int
    input_shape: tuple[int, ...] | None  # None: agreed from the nodes' schemas (own files)
    num_classes: int
    train_size: int  # training-set indices and shard lengths lie in 0..train_size-1 / 1..
    sample_count: Callable[[int], int]  # shard length -> the sample size s the config asks for
    batch_count: Callable[[int], int]  # shard length -> the mini-batch size
    # each partition's shard length where the server knows its partition (verify-samples: it
    # partitions its copy of the data): a node's claim must match it
    shard_lens: tuple[int, ...] | None = None


def content_bytes(content: RecordDict) -> int:
    """Approximate size of a message's content: array bytes plus config and metric values."""
    total = 0
    for record in content.values():
        if isinstance(record, ArrayRecord):
            total += sum(len(arr.data) for arr in record.values())
        else:
            total += sum(len(k) + _value_bytes(v) for k, v in record.items())
    return total


def _value_bytes(value: Any) -> int:
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, list):
        return sum(_value_bytes(v) for v in value)
    return 8


def describe_error(msg: Message, limit: int = 300) -> str:
    err = msg.error
    reason = " ".join(str(err.reason).split())
    if len(reason) > limit:
        reason = reason[: limit - 3] + "..."
    return f"error reply (code {err.code}): {reason}"


def _record(content: RecordDict, key: str, kind: type) -> Any:
    """The record ``key`` of type ``kind`` in ``content``, else :class:`ReplyError`."""
    if key not in content:
        raise ReplyError(f"no {kind.__name__} {key!r} in the reply")
    record = content[key]
    if not isinstance(record, kind):
        raise ReplyError(f"{key!r} is a {type(record).__name__}, expected {kind.__name__}")
    return record


def _array(
    record: ArrayRecord,
    key: str,
    dtype: str,
    ndim: int,
    max_bytes: int,
) -> np.ndarray:
    """Decode array ``key`` after checking its declared dtype, rank and size."""
    if key not in record:
        raise ReplyError(f"no array {key!r} in the reply")
    arr: Array = record[key]
    if arr.stype != "numpy.ndarray":
        raise ReplyError(f"{key} has serialization type {arr.stype!r}, expected numpy.ndarray")
    if arr.dtype != dtype:
        raise ReplyError(f"{key} has dtype {arr.dtype}, expected {dtype}")
    if len(arr.shape) != ndim:
        raise ReplyError(f"{key} has shape {tuple(arr.shape)}, expected {ndim} dimension(s)")
    if len(arr.data) > max_bytes:
        raise ReplyError(f"{key} has {len(arr.data)} bytes, more than the limit {max_bytes}")
    try:
        out = arr.numpy()
    except Exception as err:  # noqa: BLE001 - any decoding failure is the node's fault
        raise ReplyError(f"{key} cannot be decoded: {type(err).__name__}: {err}") from None
    if str(out.dtype) != dtype or out.ndim != ndim or tuple(out.shape) != tuple(arr.shape):
        raise ReplyError(
            f"{key} decodes to {out.dtype} {tuple(out.shape)}, not the declared "
            f"{arr.dtype} {tuple(arr.shape)}"
        )
    return out


def _int(meta: ConfigRecord | MetricRecord, key: str) -> int:
    if key not in meta:
        raise ReplyError(f"no {key!r} in the reply's metadata")
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReplyError(f"{key} is {value!r}, expected an integer")
    return int(value)


def parse_sample(msg: Message, spec: SampleSpec) -> SharedSample:
    """The sample in a ``query.sample`` reply, or :class:`ReplyError` saying what is wrong."""
    if msg.has_error():
        raise ReplyError(describe_error(msg))
    if not msg.has_content():
        raise ReplyError("reply without content")
    content = msg.content
    arrays = _record(content, ARRAYS, ArrayRecord)
    meta = _record(content, CONFIG, ConfigRecord)
    n = spec.num_partitions
    j = _int(meta, "partition-id")
    if not 0 <= j < n:
        raise ReplyError(f"partition-id {j} outside 0..{n - 1}")
    parts = _int(meta, "num-partitions")
    if parts != n:
        raise ReplyError(f"num-partitions {parts}, but the run has clients.n={n}")
    shard_len = _int(meta, "shard-len")
    if not 1 <= shard_len <= spec.train_size:
        raise ReplyError(f"shard-len {shard_len} outside 1..{spec.train_size}")
    if spec.shard_lens is not None and shard_len != spec.shard_lens[j]:
        # a larger claimed shard would buy a larger sample (more server work every round)
        # and, with a summed loss, a larger weight for the node's own guiding gradient
        raise ReplyError(f"shard-len {shard_len}, but partition {j} holds {spec.shard_lens[j]}")
    s = spec.sample_count(shard_len)
    batch = _int(meta, "batch-size")
    if batch != spec.batch_count(shard_len):
        raise ReplyError(
            f"batch-size {batch}, but the config gives {spec.batch_count(shard_len)} for a "
            f"shard of {shard_len}"
        )
    attack = meta.get("attack", "none")
    if not isinstance(attack, str):
        raise ReplyError(f"attack is {attack!r}, expected a string")
    # sizes first (from the metadata), then decode
    if spec.input_shape is None:
        raise ReplyError("the run's input shape is not agreed yet")
    per_example = 4 * math.prod(spec.input_shape)
    idx = _array(arrays, "idx", "int64", 1, 8 * s + SLACK_BYTES)
    y = _array(arrays, "y", "int64", 1, 8 * s + SLACK_BYTES)
    x = _array(arrays, "x", "float32", 1 + len(spec.input_shape), per_example * s + SLACK_BYTES)
    if not len(idx) == len(y) == len(x):
        raise ReplyError(f"lengths differ: idx {len(idx)}, x {len(x)}, y {len(y)}")
    if len(idx) != s:
        raise ReplyError(f"{len(idx)} examples, but the config asks for {s} of {shard_len}")
    if tuple(x.shape[1:]) != tuple(spec.input_shape):
        raise ReplyError(
            f"x has examples of shape {tuple(x.shape[1:])}, expected {spec.input_shape}"
        )
    if not np.isfinite(x).all():
        raise ReplyError(f"x has {int((~np.isfinite(x)).sum())} NaN or infinite entries")
    if y.min() < 0 or y.max() >= spec.num_classes:
        raise ReplyError(f"labels {int(y.min())}..{int(y.max())} outside 0..{spec.num_classes - 1}")
    if idx.min() < 0 or idx.max() >= spec.train_size:
        raise ReplyError(f"indices {int(idx.min())}..{int(idx.max())} outside the training set")
    if len(np.unique(idx)) != len(idx):
        raise ReplyError("repeated training-set indices")
    node = int(msg.metadata.src_node_id)
    return SharedSample(
        node_id=node,
        partition_id=j,
        indices=torch.from_numpy(idx.copy()),
        x=torch.from_numpy(x.copy()),
        y=torch.from_numpy(y.copy()),
        shard_len=shard_len,
        batch_size=batch,
        attack=attack or "none",
    )


@dataclass(frozen=True)
class Update:
    """A checked train reply: the update ``[d]`` and what the node reported."""

    update: Tensor
    byzantine: bool


def parse_update(msg: Message, dim: int, partition_id: int | None = None) -> Update:
    """The update in a train reply, or :class:`ReplyError` (wrong size or dtype, non-finite
    entries, missing records, an oversized message, an error reply)."""
    if msg.has_error():
        raise ReplyError(describe_error(msg))
    if not msg.has_content():
        raise ReplyError("reply without content")
    content = msg.content
    limit = 4 * dim + SLACK_BYTES
    size = content_bytes(content)
    if size > limit:
        raise ReplyError(f"reply of {size} bytes, more than the limit of {limit}")
    arrays = _record(content, ARRAYS, ArrayRecord)
    metrics = _record(content, METRICS, MetricRecord)
    if "theta" in arrays and tuple(arrays["theta"].shape) != (dim,):
        raise ReplyError(f"update has shape {tuple(arrays['theta'].shape)}, expected ({dim},)")
    update = _array(arrays, "theta", "float32", 1, limit)
    finite = np.isfinite(update)
    if not finite.all():
        raise ReplyError(f"update has {int((~finite).sum())} NaN or infinite entries")
    if np.abs(update).max(initial=0.0) > MAX_ABS:
        raise ReplyError(f"update has entries beyond {MAX_ABS:g}")
    byz = _int(metrics, "byzantine")
    if byz not in (0, 1):
        raise ReplyError(f"byzantine is {byz}, expected 0 or 1")
    if partition_id is not None and "partition-id" in metrics:
        claimed = _int(metrics, "partition-id")
        if claimed != partition_id:
            raise ReplyError(f"reply for partition {claimed}, but the node holds {partition_id}")
    return Update(update=torch.from_numpy(update.copy()), byzantine=bool(byz))


def parse_evaluation(msg: Message) -> tuple[int, int, float]:
    """A node's evaluation report: example count, correct predictions and summed loss, or
    :class:`ReplyError` when it is not a consistent report (counts negative or out of order,
    a loss that is not finite and non-negative)."""
    if msg.has_error():
        raise ReplyError(describe_error(msg))
    if not msg.has_content():
        raise ReplyError("reply without content")
    metrics = _record(msg.content, METRICS, MetricRecord)
    count, correct = _int(metrics, "num-examples"), _int(metrics, "correct")
    loss = metrics.get("loss-sum")
    if not 0 <= correct <= count:
        raise ReplyError(f"correct={correct} and num-examples={count}: not 0 <= correct <= count")
    if isinstance(loss, bool) or not isinstance(loss, int | float):
        raise ReplyError(f"loss-sum is {loss!r}, expected a number")
    if not math.isfinite(loss) or loss < 0:
        raise ReplyError(f"loss-sum is {loss!r}, expected a finite number >= 0")
    return count, correct, float(loss)
