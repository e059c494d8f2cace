"""Per-coordinate order statistics over the client axis, shared by the median and trimmed-mean
rules. On CPU numpy's sort is several times faster than ``torch.sort`` along the client axis
(measured in ``benchmarks/aggregators.py``), so CPU tensors are sorted with numpy (zero-copy in,
zero-copy out); other devices use torch."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _numpy_ok(x: Tensor) -> bool:
    return x.device.type == "cpu" and not x.requires_grad and x.dtype != torch.bfloat16


def sort_clients(updates: Tensor) -> Tensor:
    """Each coordinate's values in ascending order: ``updates [n, d]`` sorted along dim 0."""
    if _numpy_ok(updates):
        return torch.from_numpy(np.sort(updates.numpy(), axis=0))
    return torch.sort(updates, dim=0).values


def stable_argsort_clients(values: Tensor) -> Tensor:
    """Indices that sort ``values [n, d]`` along dim 0, ties kept in row order (stable).

    ``values`` must not contain NaN (the rules call this on distances of finite updates).
    """
    if _numpy_ok(values):
        array = values.numpy()
        if values.dtype == torch.float32 and values.dim() == 2:
            return torch.from_numpy(_keyed_argsort_float32(array))
        return torch.from_numpy(np.argsort(array, axis=0, kind="stable"))
    return torch.sort(values, dim=0, stable=True).indices


def _keyed_argsort_float32(values: np.ndarray) -> np.ndarray:
    """Stable argsort along axis 0 of a float32 ``[n, d]`` array, by an unstable integer sort.

    Each value becomes an int64 key: its rank-preserving integer image (the float's bits for
    ``>= 0``, minus its magnitude bits for ``< 0``, so ``-0.0`` and ``0.0`` tie), shifted left
    by ``ceil(log2 n)`` bits, with the row index in the freed low bits. The keys are distinct,
    so any sort orders them exactly as a stable sort orders ``(value, row)``. On the MLP's
    ``[23, 199,210]`` distances this takes 33 ms against 99 ms for numpy's stable argsort (one
    idle core, 2026-11-28). Exactly ``np.argsort(kind="stable")`` for NaN-free input (tested).
    """
    n = values.shape[0]
    shift = max(1, (n - 1).bit_length())
    keys = values.view(np.int32).astype(np.int64)
    negative = keys < 0
    if negative.any():
        keys[negative] = -(keys[negative] & 0x7FFFFFFF)
    keys <<= shift
    keys |= np.arange(n, dtype=np.int64)[:, None]
    keys.sort(axis=0)
    keys &= (1 << shift) - 1
    return keys
