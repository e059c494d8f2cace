"""Schema agreement for a federation of nodes that hold their own files.

The server has no data of its own to learn the task's shape from: each node reports its
schema with its one-time sample (input shape, classes, table columns, dtype). The classes must
be the run's declared ``data.classes``; the input shape, columns and dtype are those most
nodes report. A node that disagrees is excluded (with a WARNING naming it and the field),
never the run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import cast

from flwr.app import ConfigRecord, Message

from diversefl.flower.common import CONFIG
from diversefl.flower.replies import ReplyError, describe_error

#: The dtype every node's features must have on the wire.
FEATURE_DTYPE = "float32"


@dataclass(frozen=True)
class Schema:
    """What a node's data looks like: example shape, class names, table columns, dtype."""

    input_shape: tuple[int, ...]
    classes: tuple[str, ...]
    features: tuple[str, ...]
    dtype: str


def _strings(meta: ConfigRecord, key: str) -> tuple[str, ...]:
    value = meta.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ReplyError(f"schema {key} is {value!r}, expected a list of strings")
    return tuple(cast(list[str], value))


def read_schema(msg: Message) -> Schema:
    """The schema a ``query.sample`` reply reports, or :class:`ReplyError` saying why not."""
    if msg.has_error():
        raise ReplyError(describe_error(msg))
    if not msg.has_content() or CONFIG not in msg.content:
        raise ReplyError("reply without its metadata")
    meta = msg.content[CONFIG]
    if not isinstance(meta, ConfigRecord):
        raise ReplyError(f"{CONFIG!r} is a {type(meta).__name__}, expected ConfigRecord")
    shape = meta.get("input-shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)
    ):
        raise ReplyError(f"schema input-shape is {shape!r}, expected a list of sizes >= 1")
    dtype = meta.get("dtype", "")
    if not isinstance(dtype, str):
        raise ReplyError(f"schema dtype is {dtype!r}, expected a string")
    return Schema(
        tuple(cast(list[int], shape)), _strings(meta, "classes"), _strings(meta, "features"), dtype
    )


def _mismatch(got: Schema, want: Schema) -> str | None:
    """Which field of ``got`` disagrees with ``want`` (one line), or None."""
    if got.classes != want.classes:
        return f"schema field classes: {list(got.classes)}, the run's data.classes are " + str(
            list(want.classes)
        )
    if got.dtype != want.dtype:
        return f"schema field dtype: {got.dtype}, expected {want.dtype}"
    if got.features != want.features:
        missing = [c for c in want.features if c not in got.features]
        extra = [c for c in got.features if c not in want.features]
        detail = f"missing {missing}, extra {extra}" if missing or extra else "another order"
        return f"schema field features: the columns differ from the agreed ones ({detail})"
    if got.input_shape != want.input_shape:
        return (
            f"schema field input-shape: {got.input_shape}, the agreed shape is {want.input_shape}"
        )
    return None


def agree(
    reports: dict[int, Schema], classes: tuple[str, ...]
) -> tuple[Schema | None, dict[int, str]]:
    """The agreed schema (the run's classes, float32, the input shape and columns most nodes
    report; a tie goes to the lowest node id's) and, for each node that disagrees, why."""
    fitting = [k for k in sorted(reports) if reports[k].classes == classes]
    fitting = [k for k in fitting if reports[k].dtype == FEATURE_DTYPE]
    agreed = None
    if fitting:
        votes = Counter((reports[k].input_shape, reports[k].features) for k in fitting)
        first: dict[tuple[tuple[int, ...], tuple[str, ...]], int] = {}
        for k in fitting:
            first.setdefault((reports[k].input_shape, reports[k].features), k)
        shape, features = min(votes, key=lambda key: (-votes[key], first[key]))
        agreed = Schema(shape, classes, features, FEATURE_DTYPE)
    want = agreed or Schema((), classes, (), FEATURE_DTYPE)
    reasons = {}
    for k, got in sorted(reports.items()):
        why = _mismatch(got, want)
        if why is not None:
            reasons[k] = why
    return agreed, reasons
