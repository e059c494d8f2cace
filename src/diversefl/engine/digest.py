"""SHA-256 of a checkpoint's state: nested dicts, lists and tuples of tensors and plain values
(str, int, float, bool, None). Anything else is refused, so what a checkpoint holds is exactly
what ``torch.load(..., weights_only=True)`` reads back, and a damaged file (torch checks no
checksum of its own) is caught by comparing the digest stored with the state."""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from typing import Any

import torch

_SCALAR_TAGS = {type(None): b"0", bool: b"?", int: b"i", float: b"f", str: b"s"}


def state_digest(state: Any) -> str:
    """Hex SHA-256 of ``state``: its structure, key names, scalar values, tensor dtypes, shapes
    and bytes. Equal states give equal digests on every machine; a ``TypeError`` names any
    value that is not a tensor or a plain value."""
    h = hashlib.sha256()
    _feed(h, state, "state")
    return h.hexdigest()


def _feed(h: Any, obj: Any, where: str) -> None:
    """Add ``obj`` to ``h`` with a type tag and a length, so no two states share a stream."""
    if type(obj) in (dict, OrderedDict):
        _tag(h, b"d", len(obj))
        for key in sorted(obj, key=repr):
            if type(key) not in (str, int):
                raise TypeError(f"{where}: key {key!r} is not a str or an int")
            _feed(h, key, where)
            _feed(h, obj[key], f"{where}.{key}")
    elif type(obj) in (list, tuple):  # not a namedtuple: its class would be pickled
        _tag(h, b"l" if type(obj) is list else b"u", len(obj))
        for i, item in enumerate(obj):
            _feed(h, item, f"{where}[{i}]")
    elif isinstance(obj, torch.Tensor):
        _feed_tensor(h, obj, where)
    elif type(obj) in _SCALAR_TAGS:  # exact types: a numpy float is not a plain value
        text = repr(obj).encode()  # repr round-trips floats exactly
        _tag(h, _SCALAR_TAGS[type(obj)], len(text))
        h.update(text)
    else:
        raise TypeError(f"{where}: a {type(obj).__name__} cannot go into a checkpoint")


def _feed_tensor(h: Any, t: torch.Tensor, where: str) -> None:
    if t.layout != torch.strided:
        raise TypeError(f"{where}: a {t.layout} tensor cannot go into a checkpoint")
    flat = t.detach().cpu().contiguous().reshape(-1)
    data = flat.view(torch.uint8).numpy()  # the tensor's own bytes, hashed without a copy
    meta = f"{t.dtype}{tuple(t.shape)}".encode()
    _tag(h, b"t", len(meta))
    h.update(meta)
    _tag(h, b"x", data.nbytes)
    h.update(data)


def _tag(h: Any, kind: bytes, length: int) -> None:
    h.update(kind + struct.pack("<Q", length))
