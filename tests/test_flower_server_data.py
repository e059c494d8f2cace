"""What the Flower server holds (architecture issue #29): no training set. It is built and runs
rounds in a process whose dataset directory does not exist, from the nodes' uploaded samples
and a test set it is given, with the numbers of the in-process simulator on the same data;
the test-set sources; the dataset facts it uses instead of the data; and ``verify-samples``,
the optional server-side copy of a public dataset (benchmark federations)."""

from __future__ import annotations

import csv
import logging
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
import torch
from conftest import tiny_config

import diversefl
from diversefl.config import make_config
from diversefl.data import datasets
from diversefl.data.datasets import Dataset, load_dataset
from diversefl.data.partition import partition
from diversefl.engine.runner import train
from diversefl.engine.simulator import Simulation
from diversefl.flower import FLOWER_AVAILABLE, common
from diversefl.flower.task import BUILTIN_TASKS, task_facts
from diversefl.flower.testset import TestSet, dataset_test_split, load_test_set, read_test_set

needs_flwr = pytest.mark.skipif(
    not FLOWER_AVAILABLE, reason='flwr is not installed: pip install -e ".[flower]"'
)

N = 4
RAW: dict[str, Any] = {
    "name": "no-data-server",
    "seed": 3,
    "rounds": 3,
    "data": {"dataset": "mnist", "partition": "iid"},
    "model": {"name": "softmax"},
    "clients": {"n": N, "batch": 0.5, "sample": 0.1},
    "optim": {"lr": 0.5, "schedule": "constant", "weight_decay": 0.001},
    "attack": {"name": "sign_flip", "byzantine": [3]},
    "aggregator": {"name": "diversefl"},
    "eval": {"every": 1},
}


def _synthetic(train_size: int = 240, test_size: int = 60) -> Dataset:
    """MNIST-shaped data the test makes up: class c lights row 2c of the image, plus noise."""
    g = torch.Generator().manual_seed(0)

    def split(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randperm(size, generator=g) % 10
        x = 0.3 * torch.rand(size, 1, 28, 28, generator=g)
        x[torch.arange(size), 0, 2 * y] += 1.0
        return x, y

    x_train, y_train = split(train_size)
    x_test, y_test = split(test_size)
    return Dataset("mnist", x_train, y_train, x_test, y_test, 10, tuple("0123456789"))


def _node_caches(cfg: Any, data: Dataset, cache: Path) -> None:
    """Each node's shard file, split as the simulator splits ``data``: the nodes (the
    ClientApp, unchanged) read only these; nobody here has a dataset directory."""
    parts = partition(data.y_train, N, cfg.data.partition, seed=cfg.seed, alpha=cfg.data.alpha)
    lens = torch.tensor([len(p) for p in parts])
    for j, part in enumerate(parts):
        idx = torch.as_tensor(part, dtype=torch.long)
        shard = common.ClientShard(
            j, N, idx, data.x_train[idx].clone(), data.y_train[idx].clone(), lens, 10, (1, 28, 28)
        )
        common._save_shard(shard, common._shard_path(cfg, j, cache))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


def _plain_accuracy(theta: torch.Tensor, test: TestSet) -> float:
    """Softmax regression's test accuracy by hand: weights [10, 784] then bias [10]."""
    w, b = theta[: 10 * 784].reshape(10, 784), theta[10 * 784 :]
    logits = test.x.reshape(len(test.y), -1) @ w.T + b
    return float((logits.argmax(1) == test.y).float().mean())


@needs_flwr
def test_server_runs_without_any_dataset_directory(tmp_path, monkeypatch):
    """The ServerApp's own path (run config -> strategy) with DIVERSEFL_DATA pointing to a
    directory that does not exist, no data-dir, and every dataset load failing: the server
    gets the nodes' samples and an .npz test set, runs 3 rounds, and its metrics and
    decisions are the simulator's on the same data, bit for bit."""
    from test_flower import _loopback_grid

    from diversefl.flower.server_app import strategy_from_settings

    data = _synthetic()
    cfg = make_config(RAW)
    config = tmp_path / "cfg.toml"
    config.write_text(tomli_w.dumps(RAW))
    (tmp_path / "ref").mkdir()
    ref = train(cfg, tmp_path / "ref", progress=False, sim=Simulation(cfg, dataset=data))
    _node_caches(cfg, data, tmp_path / "cache")
    np.savez(tmp_path / "test.npz", x=data.x_test.numpy(), y=data.y_test.numpy())
    monkeypatch.setenv("DIVERSEFL_DATA", str(tmp_path / "no-such-dir"))

    def no_dataset(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the Flower server loaded a dataset")

    monkeypatch.setattr(datasets, "_load_cached", no_dataset)
    settings = common.RunSettings(
        config_path=str(config), out=str(tmp_path / "flower"), test_set=str(tmp_path / "test.npz")
    )
    strategy = strategy_from_settings(settings)
    nodes = [
        {"partition-id": j, "num-partitions": N, "cache-dir": str(tmp_path / "cache")}
        for j in range(N)
    ]
    strategy.start(_loopback_grid(nodes))
    assert _rows(tmp_path / "flower" / "metrics.csv") == _rows(tmp_path / "ref" / "metrics.csv")
    assert _rows(tmp_path / "flower" / "decisions.csv") == _rows(tmp_path / "ref" / "decisions.csv")
    summary = strategy.result.summary
    assert summary["final_test_accuracy"] == ref.summary["final_test_accuracy"]
    test = read_test_set(tmp_path / "test.npz")
    assert summary["final_test_accuracy"] == pytest.approx(
        _plain_accuracy(strategy.federation.theta, test), abs=1e-9
    )
    assert summary["flower"]["test_set"] == str(tmp_path / "test.npz")
    assert summary["flower"]["verify_samples"] is False
    assert summary["byzantine_ids"] == [3] and summary["mean_tpr"] == 1.0


@needs_flwr
def test_without_a_test_set_the_run_goes_on_without_metrics(tmp_path, monkeypatch, caplog):
    """No test split where the server looks (and no test-set given): a WARNING says the run
    has no evaluation, the rounds run, the test metrics are NaN. ``test-set = "none"`` turns
    evaluation off on purpose."""
    from test_flower import _loopback_grid

    from diversefl.flower.strategy import DiverseFLStrategy

    data, cfg = _synthetic(), make_config(RAW)
    _node_caches(cfg, data, tmp_path / "cache")
    monkeypatch.setenv("DIVERSEFL_DATA", str(tmp_path / "no-such-dir"))
    caplog.set_level(logging.INFO, logger="flwr")
    nodes = [
        {"partition-id": j, "num-partitions": N, "cache-dir": str(tmp_path / "cache")}
        for j in range(N)
    ]
    for spec in ("", "none"):
        strategy = DiverseFLStrategy(cfg, out=tmp_path / f"run{spec}", test_set=spec)
        assert strategy.federation.test is None
        strategy.start(_loopback_grid(nodes))
        rows = _rows(tmp_path / f"run{spec}" / "metrics.csv")
        assert len(rows) == 3 and all(r["test_accuracy"] == "nan" for r in rows)
        assert math.isnan(strategy.result.summary["final_test_accuracy"])
        assert strategy.result.summary["flower"]["test_set"] is None
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("no test set" in w and "without evaluation" in w for w in warned) == 1


def test_test_set_file_is_read_without_pickle_and_checked(tmp_path):
    facts = task_facts("digits")
    x = np.zeros((5, 1, 8, 8), np.float32)
    np.savez(tmp_path / "ok.npz", x=x, y=np.arange(5))
    test = load_test_set(str(tmp_path / "ok.npz"), "digits", None, facts)
    assert test is not None and test.y.dtype == torch.int64 and tuple(test.x.shape) == (5, 1, 8, 8)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    np.savez(tmp_path / "evil.npz", x=np.array([Payload()], dtype=object), y=np.arange(1))
    with pytest.raises(ValueError, match="evil.npz"):
        read_test_set(tmp_path / "evil.npz")
    assert not marker.exists()
    (tmp_path / "pickle.npz").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match="pickle.npz"):
        read_test_set(tmp_path / "pickle.npz")
    assert not marker.exists()
    bad = {
        "shape.npz": (np.zeros((5, 1, 7, 8), np.float32), np.arange(5), "examples of shape"),
        "labels.npz": (x, np.arange(5) + 6, "labels 6..10 outside 0..9"),
        "dtype.npz": (x.astype(np.float64), np.arange(5), "expected float32"),
    }
    for name, (bx, by, needle) in bad.items():
        np.savez(tmp_path / name, x=bx, y=by)
        with pytest.raises(ValueError, match=needle):
            load_test_set(str(tmp_path / name), "digits", None, facts)


def test_mnist_test_split_reads_only_the_t10k_files(tmp_path, mnist_dir):
    """The server's MNIST test split comes from the two t10k files alone (the training files
    absent) and equals load_dataset's, bit for bit."""
    only = tmp_path / "mnist"
    only.mkdir()
    for src in (Path(mnist_dir) / "mnist").iterdir():
        if src.name.startswith("t10k"):
            (only / src.name).symlink_to(src)
    got = dataset_test_split("mnist", str(tmp_path))
    want = load_dataset("mnist", mnist_dir)
    assert torch.equal(got.x, want.x_test) and torch.equal(got.y, want.y_test)
    assert got.check(task_facts("mnist")) is got


def test_task_facts_match_the_loaders(mnist_dir):
    """The public facts the server uses instead of the data are the loaders' own."""
    for name in ("digits", "mnist"):
        data = load_dataset(name, mnist_dir)
        facts = BUILTIN_TASKS[name]
        assert facts.input_shape == tuple(data.input_shape)
        assert (facts.num_classes, facts.train_size) == (data.num_classes, len(data.y_train))
    with pytest.raises(ValueError, match="data.dataset='nope': the Flower server knows digits"):
        task_facts("nope")


@needs_flwr
@pytest.mark.slow
def test_verified_fltrust_run_is_the_simulators(tmp_path):
    """verify-samples names the pooled examples by training-set index, as the simulator does,
    so FLTrust's root data and every decision are the simulator's; without it the pool is
    named by position (no node can steer which examples form the root data) and the run
    works the same way."""
    from test_flower import _loopback_grid

    from diversefl.flower.strategy import DiverseFLStrategy

    raw = tiny_config(
        clients={"n": 5, "sample": 0.2}, aggregator={"name": "fltrust", "root_size": 20},
        attack={"name": "sign_flip", "f": 1}, rounds=4, eval={"every": 2},
    )  # fmt: skip
    cfg = make_config(raw)
    nodes = [{"partition-id": j, "num-partitions": 5} for j in range(5)]
    verified = DiverseFLStrategy(cfg, out=tmp_path / "verified", verify_samples=True)
    verified.start(_loopback_grid(nodes))
    diversefl.run(cfg, out=tmp_path / "ref")
    for name in ("metrics.csv", "decisions.csv"):
        assert _rows(tmp_path / "verified" / name) == _rows(tmp_path / "ref" / name), name
    plain = DiverseFLStrategy(cfg, out=tmp_path / "plain")
    plain.start(_loopback_grid(nodes))
    pool = plain.federation.pool
    assert torch.equal(pool.keys, torch.arange(int(pool.w.sum())))
    assert len(plain.result.metrics) == 2
    assert math.isfinite(plain.result.summary["final_test_accuracy"])


@needs_flwr
def test_an_attack_that_picks_clients_from_the_data_needs_the_servers_copy():
    """The backdoor's Byzantine clients are the source-class owners: the server can assign
    them (adversary="config") only with its copy of the dataset, and then picks the
    simulator's."""
    from diversefl.flower.strategy import DiverseFLStrategy

    cfg = make_config(tiny_config(attack={"name": "backdoor"}, aggregator={"name": "mean"}))
    with pytest.raises(ValueError, match="picks its Byzantine clients from the training data"):
        DiverseFLStrategy(cfg)
    fed = DiverseFLStrategy(cfg, verify_samples=True).federation
    assert fed.byzantine_ids() == Simulation(cfg).byzantine_ids()
    assert DiverseFLStrategy(cfg, adversary="nodes").federation.f == cfg.byzantine_count()
