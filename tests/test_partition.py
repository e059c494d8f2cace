"""Tests for client partitioning schemes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import real_data_dir

from diversefl.data import PARTITIONS, owners_of_class, partition, read_idx

# the schemes that split a pool ("natural" keeps per-client data as it came)
SPLITTING = [s for s in PARTITIONS if s != "natural"]


def mnist_train_labels() -> np.ndarray:
    return read_idx(real_data_dir() / "mnist" / "train-labels-idx1-ubyte.gz").astype(np.int64)


def _synthetic(n: int = 1000, k: int = 10, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, size=n)


def _assert_exact_cover(parts: list[np.ndarray], n_examples: int, n_clients: int) -> None:
    assert len(parts) == n_clients
    for p in parts:
        assert isinstance(p, np.ndarray) and p.dtype == np.int64 and p.ndim == 1
    allidx = np.concatenate(parts)
    assert allidx.size == n_examples
    assert np.array_equal(np.sort(allidx), np.arange(n_examples))


@pytest.mark.parametrize("scheme", SPLITTING)
@pytest.mark.parametrize("n_clients", [1, 7, 23, 100])
def test_every_index_exactly_once(scheme: str, n_clients: int) -> None:
    labels = _synthetic()
    parts = partition(labels, n_clients, scheme, seed=3)
    _assert_exact_cover(parts, labels.size, n_clients)
    assert all(p.size > 0 for p in parts)


def test_every_index_once_on_mnist() -> None:
    labels = mnist_train_labels()
    for scheme in SPLITTING:
        _assert_exact_cover(partition(labels, 23, scheme), labels.size, 23)


def test_accepts_torch_labels() -> None:
    labels = _synthetic()
    a = partition(torch.from_numpy(labels), 10, "dirichlet", seed=1)
    b = partition(labels, 10, "dirichlet", seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_sorted_is_class_contiguous() -> None:
    labels = mnist_train_labels()
    parts = partition(labels, 23, "sorted")
    concat = np.concatenate(parts)
    assert np.all(np.diff(labels[concat]) >= 0)
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1
    # ties keep original index order (stable sort)
    for c in range(10):
        idx = concat[labels[concat] == c]
        assert np.all(np.diff(idx) > 0)
    assert partition(labels, 23, "sorted", seed=1)[5].tolist() == parts[5].tolist()


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_seeded_schemes(scheme: str) -> None:
    labels = _synthetic(2000)
    a = partition(labels, 12, scheme, seed=7)
    b = partition(labels, 12, scheme, seed=7)
    c = partition(labels, 12, scheme, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_near_equal() -> None:
    parts = partition(_synthetic(1003), 10, "iid")
    assert sorted(p.size for p in parts) == [100] * 7 + [101] * 3


def test_dirichlet_non_empty_even_when_tiny() -> None:
    labels = _synthetic(60, k=3)
    for seed in range(20):
        parts = partition(labels, 50, "dirichlet", seed=seed, alpha=0.01)
        _assert_exact_cover(parts, 60, 50)
        assert all(p.size > 0 for p in parts)


def test_dirichlet_small_alpha_is_skewed() -> None:
    labels = _synthetic(5000)
    parts = partition(labels, 10, "dirichlet", seed=0, alpha=0.05)
    distinct = [np.unique(labels[p]).size for p in parts]
    assert np.mean(distinct) < 6  # few classes per client, unlike iid (all 10)


def test_two_class_on_mnist_and_owners() -> None:
    labels = mnist_train_labels()
    parts = partition(labels, 23, "two-class")
    _assert_exact_cover(parts, labels.size, 23)
    for p in parts:
        assert np.unique(labels[p]).size >= 2
    expected = []
    for i, p in enumerate(parts):
        has = False
        for j in p:
            if labels[j] == 3:
                has = True
                break
        if has:
            expected.append(i)
    owners = owners_of_class(parts, labels, 3)
    assert owners == expected
    assert 0 < len(owners) < 23
    assert owners_of_class(parts, torch.from_numpy(labels), 3) == expected


def test_two_class_impossible_raises() -> None:
    labels = np.array([0] * 50 + [1] * 2)
    with pytest.raises(ValueError, match="two-class"):
        partition(labels, 10, "two-class")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_clients": 0, "scheme": "iid"}, "clients.n = 0 is invalid"),
        ({"n_clients": 101, "scheme": "iid"}, "clients.n = 101 is invalid"),
        ({"n_clients": 5, "scheme": "shards"}, "allowed: dirichlet, iid, natural, sorted, two-cl"),
        ({"n_clients": 5, "scheme": "dirichlet", "alpha": 0.0}, "alpha=0.0"),
        ({"n_clients": 5, "scheme": "dirichlet", "alpha": -1.0}, "alpha=-1.0"),
        ({"n_clients": 5, "scheme": "iid", "num_classes": 3}, "num_classes=3"),
    ],
)
def test_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        partition(_synthetic(100), **kwargs)


def test_natural_needs_per_client_data():
    with pytest.raises(ValueError, match="keeps each client's own data"):
        partition(np.arange(10) % 2, 2, "natural")
