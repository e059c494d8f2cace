"""``RUN_DIR/samples/manifest.json``: what each node uploaded (partition, node id, file, size,
sha256 of the file) and the layout every sample shares (kind, input shape, class and feature
names). Parsing checks every key and type and names the bad field in one line."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diversefl.review.files import ReviewError

FORMAT = 1
KINDS = ("image", "table", "array")
_TOP_KEYS = ("format", "kind", "input_shape", "classes", "features", "nodes")
_NODE_KEYS = ("partition", "node_id", "file", "size", "sha256", "attack")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class NodeEntry:
    """One node's upload: its partition, Flower node id, file name, row count and digest."""

    partition: int
    node_id: str
    file: str
    size: int
    sha256: str
    attack: str


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest: the shared layout of the samples and one entry per node."""

    kind: str
    input_shape: tuple[int, ...]
    classes: tuple[str, ...]
    features: tuple[str, ...] | None
    nodes: tuple[NodeEntry, ...]

    def to_bytes(self) -> bytes:
        """The manifest as JSON (deterministic: equal manifests give equal bytes and digest)."""
        doc = {
            "format": FORMAT,
            "kind": self.kind,
            "input_shape": list(self.input_shape),
            "classes": list(self.classes),
            "features": None if self.features is None else list(self.features),
            "nodes": [{k: getattr(n, k) for k in _NODE_KEYS} for n in self.nodes],
        }
        return (json.dumps(doc, indent=1) + "\n").encode("utf-8")


def sample_file(partition: int) -> str:
    """The only file name a partition's sample may have: ``partition-<J>.npz``."""
    return f"partition-{partition}.npz"


def sample_kind(input_shape: Sequence[int], features: Sequence[str] | None) -> str:
    """``table`` when feature names are given, ``image`` for a (C, H, W) shape with C in
    (1, 3), else ``array``."""
    if features is not None:
        return "table"
    if len(input_shape) == 3 and input_shape[0] in (1, 3):
        return "image"
    return "array"


def check_layout(
    where: str, input_shape: Any, classes: Any, features: Any
) -> tuple[tuple[int, ...], tuple[str, ...], tuple[str, ...] | None]:
    """Validate the layout every sample shares; returns it as tuples."""
    shape = tuple(_int_list(where, "input_shape", input_shape, minimum=1))
    names = tuple(_str_list(where, "classes", classes))
    cols = None if features is None else tuple(_str_list(where, "features", features))
    if cols is not None and shape != (len(cols),):
        raise ReviewError(
            f"{where}: input_shape: {list(shape)} does not match the {len(cols)} features "
            f"(a table's input_shape is [{len(cols)}])"
        )
    return shape, names, cols


def parse_manifest(data: bytes, where: str) -> Manifest:
    """Parse and validate manifest bytes; ``where`` (the file) starts every error message."""
    doc = _json_object(data, where)
    _exact_keys(where, "manifest", doc, _TOP_KEYS)
    if doc["format"] != FORMAT or isinstance(doc["format"], bool):
        raise ReviewError(f"{where}: format: {doc['format']!r}, expected {FORMAT}")
    shape, classes, features = check_layout(
        where, doc["input_shape"], doc["classes"], doc["features"]
    )
    kind = sample_kind(shape, features)
    if doc["kind"] != kind:
        raise ReviewError(f"{where}: kind: {doc['kind']!r}, but the layout makes it {kind!r}")
    if not isinstance(doc["nodes"], list):
        raise ReviewError(f"{where}: nodes: expected a list, got {type(doc['nodes']).__name__}")
    nodes = tuple(_node(where, i, raw) for i, raw in enumerate(doc["nodes"]))
    seen: set[int] = set()
    for i, node in enumerate(nodes):
        if node.partition in seen:
            raise ReviewError(f"{where}: nodes[{i}].partition: {node.partition} listed twice")
        seen.add(node.partition)
    return Manifest(kind, shape, classes, features, nodes)


def _node(where: str, i: int, raw: Any) -> NodeEntry:
    field = f"nodes[{i}]"
    if not isinstance(raw, dict):
        raise ReviewError(f"{where}: {field}: expected an object, got {type(raw).__name__}")
    _exact_keys(where, field, raw, _NODE_KEYS)
    partition = _int(where, f"{field}.partition", raw["partition"], minimum=0)
    for key in ("node_id", "file", "sha256", "attack"):
        if not isinstance(raw[key], str):
            raise ReviewError(f"{where}: {field}.{key}: expected a string, got {raw[key]!r}")
    if raw["file"] != sample_file(partition):
        raise ReviewError(
            f"{where}: {field}.file: {raw['file']!r} is not {sample_file(partition)!r} "
            "(sample files are named partition-<J>.npz, inside the samples folder)"
        )
    if not _SHA256.fullmatch(raw["sha256"]):
        raise ReviewError(f"{where}: {field}.sha256: {raw['sha256']!r} is not 64 hex digits")
    size = _int(where, f"{field}.size", raw["size"], minimum=1)
    return NodeEntry(partition, raw["node_id"], raw["file"], size, raw["sha256"], raw["attack"])


def _json_object(data: bytes, where: str) -> dict[str, Any]:
    def no_constant(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"key {key!r} given twice")
            out[key] = value
        return out

    try:
        doc = json.loads(
            data.decode("utf-8"), parse_constant=no_constant, object_pairs_hook=no_duplicates
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ReviewError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise ReviewError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _exact_keys(where: str, field: str, doc: dict[str, Any], keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in doc]
    if missing:
        raise ReviewError(f"{where}: {field}: missing key {missing[0]!r}")
    unknown = sorted(set(doc) - set(keys))
    if unknown:
        raise ReviewError(f"{where}: {field}: unknown key {unknown[0]!r}")


def _int(where: str, field: str, value: Any, *, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ReviewError(f"{where}: {field}: {value!r} is not an integer >= {minimum}")
    return value


def _int_list(where: str, field: str, value: Any, *, minimum: int) -> list[int]:
    if not isinstance(value, list | tuple) or not value:
        raise ReviewError(f"{where}: {field}: expected a non-empty list, got {value!r}")
    return [_int(where, f"{field}[{i}]", v, minimum=minimum) for i, v in enumerate(value)]


def _str_list(where: str, field: str, value: Any) -> list[str]:
    if not isinstance(value, list | tuple) or not value:
        raise ReviewError(f"{where}: {field}: expected a non-empty list, got {value!r}")
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v:
            raise ReviewError(f"{where}: {field}[{i}]: {v!r} is not a non-empty string")
    if len(set(value)) != len(value):
        dup = next(v for v in value if list(value).count(v) > 1)
        raise ReviewError(f"{where}: {field}: {dup!r} listed twice")
    return list(value)
