"""A Flower federation whose nodes hold their own files (``data.dataset = "files"``): each node
reads only its own CSV (node config ``data-path``), the server reads none, agrees the schema
with the nodes, evaluates federated, and reproduces the simulator's per-client run."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
import torch
from conftest import tiny_config

from diversefl.config import make_config
from diversefl.data import files as files_module
from diversefl.engine.runner import train
from diversefl.engine.seeding import generator
from diversefl.flower import FLOWER_AVAILABLE, common
from diversefl.flower.node_data import with_shard_lens

needs_flwr = pytest.mark.skipif(not FLOWER_AVAILABLE, reason="flwr not installed")
CLASSES = ["w", "x", "y", "z"]
SIZES = (("a", 120, [0, 1]), ("b", 80, [1, 2]), ("c", 60, [0, 2, 3]), ("d", 90, [0, 1, 2, 3]))


def write_hospital(path: Path, rng: np.random.Generator, size: int, classes: list[int],
                   columns: tuple[str, ...] = ("f0", "f1", "f2", "f3")) -> None:  # fmt: skip
    y = rng.choice(classes, size=size)
    x = rng.normal(size=(size, len(columns))) + 3.0 * np.eye(len(columns))[y % len(columns)]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*columns, "label"])
        for row, label in zip(x, y, strict=True):
            w.writerow([*(f"{v:.6f}" for v in row), CLASSES[label]])


@pytest.fixture
def hospitals(tmp_path: Path) -> Path:
    """Four hospitals' CSVs of unequal size and class balance, labels as names."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "hospitals"
    folder.mkdir()
    for name, size, classes in SIZES:
        write_hospital(folder / f"hospital_{name}.csv", rng, size, classes)
    return folder


def raw_config(folder: Path, **data: Any) -> dict[str, Any]:
    return tiny_config(
        data={"dataset": "files", "path": str(folder), "partition": "natural",
              "standardize": "client", "classes": CLASSES, **data},
        model={"name": "mlp", "hidden": [16]},
        clients={"n": 4, "batch": 0.5, "sample": 0.2},
        optim={"lr": 0.3, "schedule": "constant", "weight_decay": 0.0},
        rounds=15,
        aggregator={"name": "diversefl"},
        attack={"name": "sign_flip", "byzantine": [1]},
    )  # fmt: skip


def rows(path: Path, drop: str = "seconds") -> list[dict[str, str]]:
    with path.open() as fh:
        return [{k: v for k, v in r.items() if k != drop} for r in csv.DictReader(fh)]


def run_flower(tmp_path: Path, raw: dict[str, Any], node_paths: list[Path], **settings: Any):
    from test_flower import _loopback_grid

    from diversefl.flower.server_app import strategy_from_settings

    config = tmp_path / "cfg.toml"
    config.write_text(tomli_w.dumps(raw))
    run = common.RunSettings(
        config_path=str(config), out=str(tmp_path / "flower"),
        data_dir=str(tmp_path / "no-such-dir"), **settings,
    )  # fmt: skip
    strategy = strategy_from_settings(run)
    n = raw["clients"]["n"]
    nodes = [
        {"partition-id": j, "num-partitions": n, "data-path": str(p)}
        for j, p in enumerate(node_paths)
    ]
    strategy.start(_loopback_grid(nodes))
    return strategy


@needs_flwr
@pytest.mark.slow
def test_nodes_with_their_own_files_match_the_simulator(tmp_path, hospitals, monkeypatch):
    """Every node reads only its own CSV (no one reads the folder, the server reads nothing);
    the federated run's metrics and decisions equal the simulator's per-client run, and
    DiverseFL catches the sign-flipping hospital every round."""
    raw = raw_config(hospitals)
    train(make_config(raw), tmp_path / "ref", progress=False)
    read: list[str] = []
    real = files_module.load_files

    def recording(path: Any, *args: Any, **kwargs: Any) -> Any:
        read.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(files_module, "load_files", recording)
    files = sorted(hospitals.iterdir())
    strategy = run_flower(tmp_path, raw, files)
    assert sorted(set(read)) == sorted(str(p) for p in files)  # each its own file, no folder
    got, want = rows(tmp_path / "flower" / "metrics.csv"), rows(tmp_path / "ref" / "metrics.csv")
    assert [r["test_accuracy"] for r in got] == [r["test_accuracy"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert float(g["test_loss"]) == pytest.approx(float(w["test_loss"]), abs=2e-6)
        assert (g["tpr"], g["fpr"], g["n_accepted"]) == (w["tpr"], w["fpr"], w["n_accepted"])
    assert rows(tmp_path / "flower" / "decisions.csv") == rows(tmp_path / "ref" / "decisions.csv")
    summary = strategy.result.summary
    assert summary["mean_tpr"] == 1.0 and summary["byzantine_ids"] == [1]
    assert summary["flower"]["test_set"].startswith("federated")
    assert summary["flower"]["sample_sizes"] == [19, 13, 10, 14]  # 20 % of 80 % of each file


@needs_flwr
def test_sample_standardisation_matches_the_simulator(tmp_path, hospitals):
    """standardize = "samples": the server standardises with the mean/std of the uploaded
    (raw) samples and sends them to the nodes; the run equals the simulator's, whose
    statistics are those of the pooled sample rows (checked against a plain computation)."""
    from diversefl.engine.simulator import Simulation
    from diversefl.flower.node_data import read_own_files

    raw = raw_config(hospitals, standardize="samples")
    cfg = make_config(raw)
    sim = Simulation(cfg)
    rows_by_client = []
    for j, path in enumerate(sorted(hospitals.iterdir())):
        x = read_own_files(cfg, str(path)).dataset.x_train.double()  # raw features
        perm = torch.randperm(len(x), generator=generator(cfg.seed, "sample", j))
        rows_by_client.append(x[perm[: int(sim.sample_k[j])]])
    pooled = torch.cat(rows_by_client)
    assert np.allclose(sim.feature_mean, pooled.mean(0).numpy(), atol=1e-12)
    assert np.allclose(sim.feature_std, pooled.std(0, unbiased=False).numpy(), atol=1e-12)
    train(cfg, tmp_path / "ref", progress=False)
    strategy = run_flower(tmp_path, raw, sorted(hospitals.iterdir()))
    assert np.array_equal(strategy.federation.feature_stats[0], sim.feature_mean)
    got, want = rows(tmp_path / "flower" / "metrics.csv"), rows(tmp_path / "ref" / "metrics.csv")
    assert [r["test_accuracy"] for r in got] == [r["test_accuracy"] for r in want]
    assert rows(tmp_path / "flower" / "decisions.csv") == rows(tmp_path / "ref" / "decisions.csv")
    stored = np.load(tmp_path / "flower" / "samples" / "partition-0.npz")["x"]
    assert np.array_equal(stored, rows_by_client[0].float().numpy())  # reviewed raw


@needs_flwr
def test_federated_accuracy_is_the_weighted_mean_of_the_nodes(tmp_path, hospitals):
    """The logged accuracy equals the example-weighted mean of each node's accuracy on its
    own held-out rows, computed here with a plain loop over the nodes."""
    import torch

    from diversefl.engine.inputs import build_network
    from diversefl.engine.params import FlatModel
    from diversefl.flower.node_data import read_own_files

    raw = raw_config(hospitals, test_fraction=0.3)
    strategy = run_flower(tmp_path, raw, sorted(hospitals.iterdir()))
    cfg = make_config(raw)
    theta = strategy.federation.theta
    right = total = 0
    for path in sorted(hospitals.iterdir()):
        data = read_own_files(cfg, str(path)).dataset
        fm = FlatModel(build_network(cfg, tuple(data.input_shape), data.num_classes))
        fm.module.eval()
        with torch.no_grad():
            logits = torch.func.functional_call(fm.module, fm.unflatten(theta), (data.x_test,))
        preds = logits.argmax(1)
        right += int((preds == data.y_test).sum())
        total += len(data.y_test)
    assert strategy.result.final_accuracy == pytest.approx(right / total, abs=1e-6)


@needs_flwr
def test_a_node_whose_schema_disagrees_is_excluded_by_name(tmp_path, hospitals, caplog):
    """A hospital whose table has another column is excluded with a WARNING naming the node
    and the field; the others train on."""
    odd = tmp_path / "odd.csv"
    write_hospital(odd, np.random.default_rng(1), 70, [0, 1], ("f0", "f1", "f2", "g3"))
    files = sorted(hospitals.iterdir())
    files[2] = odd
    with caplog.at_level(logging.WARNING):
        strategy = run_flower(tmp_path, raw_config(hospitals), files)
    summary = strategy.result.summary
    assert list(summary["flower"]["excluded"]) == ["2"]
    why = summary["flower"]["excluded"]["2"]
    assert "schema field features" in why and "missing ['f3'], extra ['g3']" in why
    assert any("excluding node" in r.getMessage() and "features" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    assert summary["flower"]["sample_sizes"][2] == 0


@needs_flwr
@pytest.mark.slow
def test_bad_node_data_is_named_and_that_node_excluded(tmp_path, hospitals):
    """A node with a label outside the declared classes, and one with no data-path: each is
    excluded with the node's own error (the file and row, or the missing key)."""
    bad = tmp_path / "bad.csv"
    bad.write_text("f0,f1,f2,f3,label\n1,2,3,4,w\n1,2,3,4,q\n" + "0,0,0,1,x\n" * 8)
    files = sorted(hospitals.iterdir())
    files[3] = bad
    # a node that fails gives no partition to wait for: the sample stage waits out its timeout
    strategy = run_flower(tmp_path, raw_config(hospitals), files, timeout=3.0)
    excluded = strategy.result.summary["flower"]["excluded"]
    assert list(excluded) == ["3"] and "bad.csv" in excluded["3"] and "'q'" in excluded["3"]

    from test_flower import _loopback_grid

    from diversefl.flower.server_app import strategy_from_settings

    config = tmp_path / "cfg.toml"
    settings = common.RunSettings(config_path=str(config), out=str(tmp_path / "f2"), timeout=3.0)
    strategy = strategy_from_settings(settings)
    nodes = [{"partition-id": j, "num-partitions": 4, "data-path": str(p)}
             for j, p in enumerate(sorted(hospitals.iterdir()))]  # fmt: skip
    del nodes[0]["data-path"]
    strategy.start(_loopback_grid(nodes))
    assert "data-path" in strategy.result.summary["flower"]["excluded"]["0"]


@needs_flwr
def test_the_server_refuses_a_federation_without_declared_classes(tmp_path, hospitals):
    from diversefl.flower.strategy import DiverseFLStrategy

    raw = raw_config(hospitals)
    del raw["data"]["classes"]
    with pytest.raises(ValueError, match="data.classes"):
        DiverseFLStrategy(make_config(raw))
    with pytest.raises(ValueError, match="verify-samples"):
        DiverseFLStrategy(make_config(raw_config(hospitals)), verify_samples=True)


def test_a_node_refuses_pool_standardisation(tmp_path, hospitals):
    from diversefl.data.datasets import DataError
    from diversefl.flower.node_data import read_own_files

    raw = raw_config(hospitals)
    del raw["data"]["standardize"]
    with pytest.raises(DataError, match="standardize = 'samples'"):
        read_own_files(make_config(raw), str(sorted(hospitals.iterdir())[0]))


def test_shard_lens_from_the_server_are_checked(hospitals):
    from diversefl.flower.node_data import load_node_data

    cfg = make_config(raw_config(hospitals))
    node = {"data-path": str(sorted(hospitals.iterdir())[1])}
    own = load_node_data(cfg, common.config_to_text(cfg), 1, 4, node)
    shard = with_shard_lens(own.shard, "96,64,48,72")
    assert shard.shard_lens.tolist() == [96, 64, 48, 72]
    for bad in ("96,65,48,72", "96,64", "a,b,c,d", "0,64,48,72"):
        with pytest.raises(ValueError, match="shard-lens"):
            with_shard_lens(own.shard, bad)


@needs_flwr
def test_a_dishonest_evaluation_report_is_refused():
    from flwr.app import Message, MetricRecord, RecordDict

    from diversefl.flower.replies import ReplyError, parse_evaluation

    def report(**m: Any) -> Message:
        msg = Message(
            RecordDict({"metrics": MetricRecord(m)}), dst_node_id=1, message_type="evaluate"
        )
        return msg

    assert parse_evaluation(report(**{"num-examples": 10, "correct": 7, "loss-sum": 3.5})) == (
        10, 7, 3.5,
    )  # fmt: skip
    for bad in ({"num-examples": 10, "correct": 11, "loss-sum": 1.0},
                {"num-examples": 10, "correct": -1, "loss-sum": 1.0},
                {"num-examples": 10, "correct": 3, "loss-sum": float("nan")},
                {"num-examples": 10, "correct": 3, "loss-sum": -1.0},
                {"num-examples": 10, "correct": 3}):  # fmt: skip
        with pytest.raises(ReplyError):
            parse_evaluation(report(**bad))


@needs_flwr
@pytest.mark.slow
def test_the_server_waits_for_the_sample_review_and_drops_what_it_rejects(tmp_path, hospitals):
    """With require-approval the server writes the uploaded samples, waits for
    `diversefl samples RUN_DIR --approve --reject 2`, then trains without partition 2; the
    samples it trained against are recorded in summary.json by digest."""
    import threading
    import time

    from diversefl.cli import main
    from diversefl.review import read_samples

    out = tmp_path / "flower"
    done: dict[str, Any] = {}

    def serve() -> None:
        done["strategy"] = run_flower(
            tmp_path, raw_config(hospitals), sorted(hospitals.iterdir()), require_approval=True
        )

    server = threading.Thread(target=serve)
    server.start()
    deadline = time.monotonic() + 120
    while not (out / "samples" / "manifest.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    assert server.is_alive()  # waiting for the approval, not training
    assert not (out / "metrics.csv").exists() or rows(out / "metrics.csv") == []
    stored = read_samples(out)
    assert [s.partition for s in stored.samples] == [0, 1, 2, 3]
    assert stored.features == ("f0", "f1", "f2", "f3") and stored.classes == tuple(CLASSES)
    assert main(["samples", str(out), "--approve", "--reject", "2"]) == 0
    server.join(timeout=300)
    summary = done["strategy"].result.summary
    assert summary["flower"]["excluded"] == {"2": summary["flower"]["excluded"]["2"]}
    assert "rejected in the sample review" in summary["flower"]["excluded"]["2"]
    review = summary["flower"]["samples"]
    assert review["rejected"] == [2]
    import hashlib

    for j in range(4):
        data = (out / "samples" / f"partition-{j}.npz").read_bytes()
        assert review["sha256"][str(j)] == hashlib.sha256(data).hexdigest()


def test_a_model_that_does_not_fit_the_agreed_classes_is_refused():
    from diversefl.flower.federation import _check_outputs
    from diversefl.flower.task import TaskFacts

    facts = TaskFacts((4,), 3, 100)
    _check_outputs(torch.nn.Linear(4, 3), facts, "ok")
    with pytest.raises(ValueError, match=r"outputs of shape \(1, 2\).*3 classes"):
        _check_outputs(torch.nn.Linear(4, 2), facts, "two")
    with pytest.raises(ValueError, match="does not take examples of shape"):
        _check_outputs(torch.nn.Linear(5, 3), facts, "wide")
