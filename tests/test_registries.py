"""One registry kind for every named choice: the config's allowed values come from the
registries, so adding a model, a dataset, a partition or a schedule is one function plus one
registration, and [aggregator] name dispatches rules and protocols by type."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import tiny_config
from torch import nn

from diversefl import aggregators, attacks
from diversefl.config import ConfigError, make_config
from diversefl.data.datasets import DATASETS, DataError, Dataset, DatasetSource, _unpickle
from diversefl.data.partition import PARTITIONS, partition
from diversefl.engine.runner import train
from diversefl.engine.schedules import SCHEDULES, make_schedule
from diversefl.methods import METHODS, build_method, is_protocol
from diversefl.models import MODELS
from diversefl.protocols import PROTOCOLS
from diversefl.registry import Registry, UnknownNameError


@pytest.mark.parametrize(
    ("registry", "kind"),
    [
        (aggregators.REGISTRY, "aggregator"),
        (attacks.REGISTRY, "attack"),
        (PROTOCOLS, "protocol"),
        (METHODS, "aggregator"),
        (MODELS, "model"),
        (DATASETS, "dataset"),
        (PARTITIONS, "partition"),
        (SCHEDULES, "schedule"),
    ],
)
def test_every_named_choice_is_one_registry_kind(registry, kind):
    assert isinstance(registry, Registry) and registry.kind == kind
    with pytest.raises(UnknownNameError, match=f"unknown {kind} 'zzqx'; allowed: "):
        registry.lookup("zzqx")


def test_methods_are_the_rules_and_the_protocols():
    assert set(METHODS) == set(aggregators.REGISTRY) | set(PROTOCOLS)
    assert is_protocol(build_method("rsa", {"delta": 0.1}))
    assert not is_protocol(build_method("krum"))


def _tiny_linear(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes))


def _constant_half(lr: float, **_: object):
    return lambda r: lr / 2


def _round_robin(y, n, seed, alpha, k):
    return [np.arange(j, y.size, n) for j in range(n)]


@pytest.fixture
def registered(monkeypatch):
    """A model, a schedule, a partition and a dataset added by one registration each."""
    for registry, name, entry in (
        (MODELS, "tiny_linear", _tiny_linear),
        (SCHEDULES, "half", _constant_half),
        (PARTITIONS, "round-robin", _round_robin),
        (DATASETS, "blobs", DatasetSource(lambda root, verify: _blobs(), needs_dir=False)),
    ):
        monkeypatch.setitem(registry._entries, name, entry)


def _blobs() -> Dataset:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    shift = 4.0 * torch.nn.functional.one_hot(y, 4).float().view(300, 1, 2, 2)
    x = torch.randn(300, 1, 2, 2, generator=g) + shift  # class c: dimension c shifted
    return Dataset(
        "blobs", x[:240], y[:240], x[240:], y[240:], num_classes=3, class_names=("a", "b", "c")
    )


def test_a_registered_model_dataset_partition_and_schedule_run_from_the_config(registered):
    raw = tiny_config(
        data={"dataset": "blobs", "partition": "round-robin"},
        model={"name": "tiny_linear"},
        optim={"lr": 1.0, "schedule": "half", "weight_decay": 0.0},
        clients={"n": 4, "batch": 1.0, "sample": 5},
        rounds=30,
    )
    result = train(make_config(raw), progress=False)
    assert result.summary["n_params"] == 4 * 3 + 3  # the registered model ran
    assert result.final_accuracy > 0.9  # three well separated blobs
    assert make_schedule("half", 0.4)(7) == 0.2
    parts = partition(np.arange(10) % 2, 3, "round-robin")
    assert [p.tolist() for p in parts] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [
        ("data.dataset", "imagenet", "dataset"),
        ("data.partition", "shards", "partition"),
        ("model.name", "resnet", "model"),
        ("optim.schedule", "cosine", "schedule"),
        ("aggregator.name", "fedavg", "aggregator"),
        ("attack.name", "zero", "attack"),
    ],
)
def test_config_asks_the_registry_for_allowed_names(key, value, kind):
    section, field = key.split(".")
    raw = tiny_config(**{section: {field: value}})
    with pytest.raises(ConfigError, match=f"unknown {kind} '{value}'; allowed: "):
        make_config(raw)


class _Payload:
    def __reduce__(self):
        return (open, ("/tmp/diversefl-cifar-payload-ran", "w"))


def test_a_cifar_pickle_cannot_run_code(tmp_path):
    """CIFAR's python files are pickles: only arrays and plain containers are built."""
    marker = "/tmp/diversefl-cifar-payload-ran"
    import os

    if os.path.exists(marker):
        os.remove(marker)
    bad = tmp_path / "data_batch_1"
    bad.write_bytes(pickle.dumps({b"data": _Payload(), b"labels": [0]}))
    with pytest.raises(DataError, match="refusing to load"):
        _unpickle(bad)
    assert not os.path.exists(marker)
    good = tmp_path / "test_batch"
    arr = np.arange(12, dtype=np.uint8).reshape(1, 12)
    good.write_bytes(pickle.dumps({b"data": arr, b"labels": [3], b"filenames": [b"x.png"]}))
    loaded = _unpickle(good)
    assert np.array_equal(loaded[b"data"], arr) and loaded[b"labels"] == [3]


def test_a_rule_registered_after_import_is_a_valid_aggregator_name(monkeypatch):
    """METHODS is a live view of the aggregator and protocol registries: a rule added to
    aggregators.REGISTRY after diversefl.methods was imported is accepted by the config and
    built; METHODS.register sends a rule to the aggregators and a protocol to PROTOCOLS."""
    from dataclasses import dataclass
    from typing import ClassVar

    from diversefl.aggregators import REGISTRY as AGGREGATORS
    from diversefl.aggregators.mean import Mean
    from diversefl.methods import METHODS, build_method
    from diversefl.protocols import PROTOCOLS
    from diversefl.protocols.rsa import RSA

    @dataclass
    class LateMean(Mean):
        """The mean, registered late."""

        name: ClassVar[str] = "late_mean"

    monkeypatch.setattr(AGGREGATORS, "_entries", dict(AGGREGATORS._entries))
    monkeypatch.setattr(PROTOCOLS, "_entries", dict(PROTOCOLS._entries))
    AGGREGATORS.register("late_mean", LateMean)
    assert "late_mean" in METHODS and isinstance(build_method("late_mean"), LateMean)
    make_config(tiny_config(aggregator={"name": "late_mean"}))
    METHODS.register("late_mean_2", LateMean)
    METHODS.register("rsa_2", RSA)
    assert "late_mean_2" in AGGREGATORS and "rsa_2" in PROTOCOLS
    with pytest.raises(ValueError, match="already registered"):
        METHODS.register("mean", LateMean)
