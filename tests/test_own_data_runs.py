"""Your own files and model through the config: `dataset = "files"` with per-client CSVs as a
natural partition or one npz pool split by the partition, `model.hidden` and `model.factory`."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import tiny_config

from diversefl.config import ConfigError, make_config
from diversefl.engine.runner import train
from diversefl.engine.simulator import Simulation


def _blobs(rng: np.random.Generator, n: int, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    y = rng.choice(classes, size=n)
    x = rng.normal(size=(n, 4)) + 3.0 * np.eye(4)[y]
    return x, y


def _write_csv(path, x, y):
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["f0", "f1", "f2", "f3", "label"])
        for row, label in zip(x, y, strict=True):
            w.writerow([*(f"{v:.6f}" for v in row), int(label)])


@pytest.fixture
def hospitals(tmp_path):
    """Three hospitals' CSVs of unequal size and class balance."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "hospitals"
    folder.mkdir()
    for name, size, classes in (("a", 120, [0, 1]), ("b", 80, [1, 2]), ("c", 60, [0, 2, 3])):
        _write_csv(folder / f"hospital_{name}.csv", *_blobs(rng, size, classes))
    return folder


def _files_config(path, **sections):
    base = tiny_config(
        data={"dataset": "files", "path": str(path), "partition": "natural"},
        model={"name": "mlp", "hidden": [16]},
        clients={"n": 3, "batch": 0.5, "sample": 0.2},
        optim={"lr": 0.3, "schedule": "constant", "weight_decay": 0.0},
        rounds=40,
    )
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return make_config(base)


def test_per_client_csvs_train_as_a_natural_partition(hospitals):
    sim = Simulation(_files_config(hospitals))
    # client j trains on exactly the rows of the j-th file (sorted by name), minus its 20% held out
    assert sim.shard_len.tolist() == [96, 64, 48]
    assert sim.fm.dim == 4 * 16 + 16 + 16 * 4 + 4  # model.hidden = [16], four classes
    result = train(_files_config(hospitals, aggregator={"name": "diversefl"}), progress=False)
    assert result.final_accuracy > 0.85


def test_natural_data_needs_the_natural_partition_and_its_client_count(hospitals):
    with pytest.raises(ConfigError, match="set data.partition = 'natural'"):
        Simulation(_files_config(hospitals, data={"partition": "iid"}))
    with pytest.raises(ConfigError, match="set clients.n = 3"):
        Simulation(_files_config(hospitals, clients={"n": 4}))


def test_an_npz_pool_is_split_by_the_partition(tmp_path):
    rng = np.random.default_rng(1)
    x, y = _blobs(rng, 300, [0, 1, 2, 3])
    np.savez(tmp_path / "pool.npz", x=x.astype(np.float32), y=y)
    cfg = _files_config(tmp_path / "pool.npz", data={"partition": "iid"}, clients={"n": 5})
    sim = Simulation(cfg)
    assert int(sim.shard_len.sum()) == 240 and sim.n == 5  # 20% held out as the test set


def test_files_settings_are_checked_in_the_config(tmp_path):
    with pytest.raises(ConfigError, match="set data.path"):
        make_config(tiny_config(data={"dataset": "files"}))
    with pytest.raises(ConfigError, match="only for dataset = 'files'"):
        make_config(tiny_config(data={"label": "y"}))
    with pytest.raises(ConfigError, match="model.hidden: only for name = 'mlp'"):
        make_config(tiny_config(model={"name": "softmax", "hidden": [3]}))


FACTORY = """
from torch import nn

def tiny(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))

def with_batch_norm(input_shape, num_classes):
    layers = [nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, num_classes)]
    return nn.Sequential(*layers)
"""


def test_model_factory_from_the_config(tmp_path, monkeypatch):
    (tmp_path / "user_nets.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = make_config(tiny_config(model={"factory": "user_nets:tiny"}))
    sim = Simulation(cfg)
    assert sim.fm.dim == 64 * 32 + 32 + 32 * 10 + 10
    bn = make_config(tiny_config(model={"factory": "user_nets:with_batch_norm"}))
    with pytest.raises(ValueError, match="normalise over the batch"):
        Simulation(bn)


def _mlp_factory(input_shape, num_classes):
    from torch import nn

    return nn.Sequential(nn.Linear(input_shape[0], 16), nn.ReLU(), nn.Linear(16, num_classes))


def _api_config(**sections):
    return tiny_config(
        rounds=40,
        clients={"n": 3, "batch": 0.5, "sample": 0.2},
        optim={"lr": 0.3, "schedule": "constant", "weight_decay": 0.0},
        **sections,
    )


def test_python_api_takes_arrays_and_a_model_factory(tmp_path):
    import diversefl

    rng = np.random.default_rng(2)
    x, y = _blobs(rng, 400, [0, 1, 2, 3])
    data = (x[:300], y[:300], x[300:], y[300:])
    cfg = _api_config(data={"partition": "iid"}, aggregator={"name": "diversefl"})
    result = diversefl.run(cfg, data=data, model=_mlp_factory, out=tmp_path / "run")
    assert result.summary["n_params"] == 4 * 16 + 16 + 16 * 4 + 4
    assert result.final_accuracy > 0.85
    assert (tmp_path / "run" / "metrics.csv").is_file()


def test_python_api_takes_per_client_data_as_a_natural_partition():
    import diversefl

    rng = np.random.default_rng(3)
    clients = [_blobs(rng, size, classes) for size, classes in ((90, [0, 1]), (50, [2, 3]))]
    test = _blobs(rng, 80, [0, 1, 2, 3])
    cfg = _api_config(attack={"name": "sign_flip", "byzantine": [1]})
    result = diversefl.run(cfg, data={"clients": [*clients, clients[0]], "test": test}, out=False)
    assert result.summary["n"] == 3  # clients.n follows the data
    assert result.summary["byzantine_ids"] == [1]
    with pytest.raises(TypeError, match="data: expected"):
        diversefl.run(cfg, data=[1, 2], out=False)
