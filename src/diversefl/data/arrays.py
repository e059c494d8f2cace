"""A user's data held in memory (numpy arrays or torch tensors) as a :class:`Dataset`: one pool
that the configured partition splits, or one entry per client (a natural partition: the clients'
rows concatenated into one training pool, each client a fixed set of its indices)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diversefl.data.datasets import DataError, Dataset


@dataclass(frozen=True, eq=False)
class UserData:
    """A dataset plus, for per-client data, each client's training indices into it."""

    dataset: Dataset
    client_parts: list[np.ndarray] | None = None


def _features(x: Any, what: str) -> torch.Tensor:
    """Float32 features ``[N, ...]``; NaN or infinity is an error naming the first bad row."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.dim() < 2:
        raise DataError(
            f"{what}: features must be [N, ...] with one row per example, got {tuple(t.shape)}"
        )
    if not (
        t.dtype.is_floating_point
        or t.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    ):
        raise DataError(f"{what}: features must be numbers, got {t.dtype}")
    t = t.detach().cpu().to(torch.float32).contiguous()
    bad = (~torch.isfinite(t.flatten(1))).any(dim=1).nonzero().flatten()
    if bad.numel():
        raise DataError(f"{what}: row {int(bad[0])} has NaN or infinite features")
    return t


def _labels(y: Any, n: int, what: str) -> torch.Tensor:
    """Int64 labels ``[n]``, each >= 0."""
    arr = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DataError(
            f"{what}: labels must be [N] with N = {n} (the features' rows), got {arr.shape}"
        )
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise DataError(f"{what}: labels must be class indices (integers), got {arr.dtype}")
    labels = torch.as_tensor(arr.astype(np.int64))
    if labels.numel() and int(labels.min()) < 0:
        raise DataError(f"{what}: labels must be >= 0, got {int(labels.min())}")
    return labels


def _class_count(num_classes: int | None, *labels: torch.Tensor) -> int:
    seen = max((int(t.max()) + 1 for t in labels if t.numel()), default=0)
    if num_classes is None:
        return seen
    if seen > num_classes:
        raise DataError(f"labels go up to {seen - 1}, outside num_classes = {num_classes}")
    return int(num_classes)


def from_arrays(
    x_train: Any, y_train: Any, x_test: Any, y_test: Any, num_classes: int | None = None,
    name: str = "arrays",
) -> UserData:  # fmt: skip
    """One pool of training examples plus a test set (the configured partition splits it)."""
    xt, xs = _features(x_train, "x_train"), _features(x_test, "x_test")
    if xt.shape[1:] != xs.shape[1:]:
        raise DataError(
            f"x_test rows have shape {tuple(xs.shape[1:])}, x_train rows {tuple(xt.shape[1:])}"
        )
    yt, ys = _labels(y_train, xt.shape[0], "y_train"), _labels(y_test, xs.shape[0], "y_test")
    k = _class_count(num_classes, yt, ys)
    names = tuple(str(c) for c in range(k))
    return UserData(Dataset(name, xt, yt, xs, ys, num_classes=k, class_names=names))


def from_clients(
    clients: Sequence[tuple[Any, Any]], test: tuple[Any, Any], num_classes: int | None = None,
    name: str = "clients",
) -> UserData:  # fmt: skip
    """One ``(x, y)`` per client (unequal sizes allowed) plus a test set ``(x, y)``: client j
    trains on exactly its own rows (``data.partition = "natural"``)."""
    if len(clients) == 0:
        raise DataError("no clients: pass one (x, y) per client")
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    parts: list[np.ndarray] = []
    start = 0
    for j, (x, y) in enumerate(clients):
        xj = _features(x, f"client {j}")
        if xj.shape[0] == 0:
            raise DataError(f"client {j} has no examples")
        if xs and xj.shape[1:] != xs[0].shape[1:]:
            raise DataError(
                f"client {j}: rows of shape {tuple(xj.shape[1:])}, client 0's "
                f"{tuple(xs[0].shape[1:])}"
            )
        xs.append(xj)
        ys.append(_labels(y, xj.shape[0], f"client {j}"))
        parts.append(np.arange(start, start + xj.shape[0], dtype=np.int64))
        start += xj.shape[0]
    pool = from_arrays(torch.cat(xs), torch.cat(ys), test[0], test[1], num_classes, name)
    return UserData(pool.dataset, parts)
