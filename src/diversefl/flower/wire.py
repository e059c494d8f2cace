"""The node worker's message format: JSON for the structure plus raw numeric array bytes, so
nothing read from the socket can run code (the default of multiprocessing's ``Connection.send``
is pickle, which executes whatever a peer holding the key sends)."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

# what may cross the socket as an array: plain numeric dtypes, nothing with Python objects
DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "float16", "float32", "float64")
_HEADER = struct.Struct("<Q")


class WireError(ValueError):
    """A message that is not in this format (truncated, tampered, or of another kind)."""


def encode(obj: Any) -> bytes:
    """``obj`` (dicts with string keys, lists, str, int, float, bool, None, numpy arrays and
    torch tensors of the numeric dtypes in :data:`DTYPES`) as bytes."""
    buffers: list[bytes] = []

    def walk(value: Any) -> Any:
        if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            if value.dtype.name not in DTYPES:
                raise WireError(f"array of dtype {value.dtype} cannot be sent (allowed: {DTYPES})")
            buffers.append(np.ascontiguousarray(value).tobytes())
            return {"__array__": len(buffers) - 1, "dtype": value.dtype.name, "shape": value.shape}
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                raise WireError("only string keys can be sent")
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        if isinstance(value, np.generic):
            return value.item()
        if value is None or isinstance(value, str | int | float | bool):
            return value
        raise WireError(f"a {type(value).__name__} cannot be sent")

    tree = walk(obj)
    sizes = [len(b) for b in buffers]
    header = json.dumps({"tree": tree, "sizes": sizes}, allow_nan=True).encode()
    return _HEADER.pack(len(header)) + header + b"".join(buffers)


def decode(data: bytes) -> Any:
    """The object :func:`encode` wrote; anything else is a :class:`WireError`."""
    if len(data) < _HEADER.size:
        raise WireError("message too short")
    (length,) = _HEADER.unpack_from(data)
    start = _HEADER.size + length
    try:
        head = json.loads(data[_HEADER.size : start])
        sizes = [int(s) for s in head["sizes"]]
    except (ValueError, KeyError, TypeError) as err:
        raise WireError(f"unreadable message header ({err})") from None
    if start + sum(sizes) != len(data) or any(s < 0 for s in sizes):
        raise WireError("message length does not match its header")
    offsets = np.cumsum([start, *sizes]).tolist()
    arrays = [data[offsets[i] : offsets[i + 1]] for i in range(len(sizes))]

    def build(value: Any) -> Any:
        if isinstance(value, dict) and "__array__" in value:
            dtype, shape = value.get("dtype"), tuple(int(s) for s in value.get("shape", ()))
            if dtype not in DTYPES:
                raise WireError(f"array of dtype {dtype!r} is not allowed")
            raw = arrays[int(value["__array__"])]
            if int(np.prod(shape)) * np.dtype(dtype).itemsize != len(raw):
                raise WireError("array bytes do not match its shape")
            return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        if isinstance(value, dict):
            return {k: build(v) for k, v in value.items()}
        if isinstance(value, list):
            return [build(v) for v in value]
        return value

    return build(head["tree"])
