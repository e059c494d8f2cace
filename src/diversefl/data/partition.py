"""Split a training set's indices among federated clients (IID and several non-IID schemes)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from diversefl.registry import Registry

__all__ = ["PARTITIONS", "owners_of_class", "partition"]


def _as_labels(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    """Return labels as a 1-D int64 numpy array."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _sorted_order(labels: np.ndarray) -> np.ndarray:
    """Indices sorted by label, ties kept in original index order."""
    return np.argsort(labels, kind="stable").astype(np.int64)


def _dirichlet(
    labels: np.ndarray, n: int, rng: np.random.Generator, alpha: float, num_classes: int
) -> list[np.ndarray]:
    """Per class, split its shuffled examples among clients by Dirichlet(alpha) proportions."""
    buckets: list[list[np.ndarray]] = [[] for _ in range(n)]
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if idx.size == 0:
            continue
        props = rng.dirichlet(np.full(n, alpha))
        cuts = (np.cumsum(props)[:-1] * idx.size).astype(np.int64)
        for client, piece in enumerate(np.split(idx, cuts)):
            buckets[client].append(piece)
    parts = [np.sort(np.concatenate(b)) if b else np.empty(0, np.int64) for b in buckets]
    # Empty clients: move one example (the largest index) from the currently largest client.
    # Deterministic, changes at most n examples, and always possible because n <= len(labels).
    for client in range(n):
        if parts[client].size == 0:
            donor = int(np.argmax([p.size for p in parts]))
            parts[client] = parts[donor][-1:]
            parts[donor] = parts[donor][:-1]
    return parts


def _two_class(labels: np.ndarray, n: int) -> list[np.ndarray]:
    """Sort by label, cut into 2n chunks, give client i chunks i and i+n."""
    chunks = np.array_split(_sorted_order(labels), 2 * n)
    parts = [np.concatenate([chunks[i], chunks[i + n]]) for i in range(n)]
    for i, part in enumerate(parts):
        distinct = np.unique(labels[part]).size
        if distinct < 2:
            raise ValueError(
                f"two-class partition: client {i} holds {distinct} distinct label(s), need >= 2; "
                f"with {n} clients and {labels.size} examples the two label-sorted chunks it gets "
                "share one class (too many clients, too few examples, or too few classes): use "
                "fewer clients or another scheme"
            )
    return parts


def partition(
    labels: np.ndarray | torch.Tensor,
    n_clients: int,
    scheme: str,
    seed: int = 0,
    alpha: float = 0.5,
    num_classes: int | None = None,
) -> list[np.ndarray]:
    """Assign every training index to exactly one of ``n_clients`` clients by ``scheme``."""
    y = _as_labels(labels)
    if scheme not in PARTITIONS:
        raise ValueError(
            f"unknown partition scheme {scheme!r}; allowed: {', '.join(PARTITIONS.names())}"
        )
    if isinstance(n_clients, bool) or not isinstance(n_clients, int | np.integer):
        raise ValueError(f"n_clients must be an integer, got {n_clients!r}")
    n = int(n_clients)
    if n < 1 or n > y.size:
        raise ValueError(
            f"clients.n = {n} is invalid: allowed 1..{y.size} (the number of training examples)"
        )
    if not alpha > 0:
        raise ValueError(f"alpha={alpha} is invalid: the Dirichlet concentration must be > 0")
    if y.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(y.min())}")
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if k <= int(y.max()):
        raise ValueError(f"num_classes={num_classes} but labels go up to {int(y.max())}")

    parts = PARTITIONS[scheme](y, n, seed, float(alpha), k)
    return [np.asarray(p, dtype=np.int64) for p in parts]


def _sorted(y: np.ndarray, n: int, seed: int, alpha: float, k: int) -> list[np.ndarray]:
    """The paper's shards: indices sorted by label, cut into n consecutive chunks."""
    return np.array_split(_sorted_order(y), n)


def _iid(y: np.ndarray, n: int, seed: int, alpha: float, k: int) -> list[np.ndarray]:
    """A seeded uniform shuffle cut into n chunks (each chunk's indices ascending)."""
    perm = np.random.default_rng(seed).permutation(y.size).astype(np.int64)
    return [np.sort(p) for p in np.array_split(perm, n)]


def _natural(y: np.ndarray, n: int, seed: int, alpha: float, k: int) -> list[np.ndarray]:
    """The clients' own data, as it came (one file or array per client): nothing to split."""
    raise ValueError(
        "data.partition = 'natural' keeps each client's own data: it needs per-client data "
        "(data.layout = 'per-client', or diversefl.run(data=Clients(...)))"
    )


#: name -> ``(labels, n, seed, alpha, num_classes) -> list of index arrays``. A new scheme is
#: one function plus one line here.
PARTITIONS: Registry[Callable[[np.ndarray, int, int, float, int], list[np.ndarray]]] = Registry(
    "partition",
    {
        "sorted": _sorted,
        "iid": _iid,
        "dirichlet": lambda y, n, seed, alpha, k: _dirichlet(
            y, n, np.random.default_rng(seed), alpha, k
        ),
        "two-class": lambda y, n, seed, alpha, k: _two_class(y, n),
        "natural": _natural,
    },
)


def owners_of_class(
    parts: list[np.ndarray], labels: np.ndarray | torch.Tensor, cls: int
) -> list[int]:
    """Client ids (ascending) holding any example of class ``cls``: the backdoor's Byzantines."""
    y = _as_labels(labels)
    return [i for i, p in enumerate(parts) if np.any(y[np.asarray(p, dtype=np.int64)] == cls)]
