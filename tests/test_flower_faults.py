"""Bad nodes against the Flower server: malformed or missing samples, malformed updates, nodes
that stop answering (in-process, through the loopback grid of test_flower.py), and, marked
slow, a SuperNode killed mid-run in a real localhost deployment."""

from __future__ import annotations

import csv
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
import torch
from conftest import tiny_config

from diversefl.config import make_config
from diversefl.engine.simulator import Simulation
from diversefl.flower import FLOWER_AVAILABLE
from diversefl.results import RunDirError

pytestmark = pytest.mark.skipif(
    not FLOWER_AVAILABLE, reason='flwr is not installed: pip install -e ".[flower]"'
)

if FLOWER_AVAILABLE:
    from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict
    from test_flower import _leftovers, _loopback_grid

    from diversefl.flower.common import ARRAYS, CONFIG, METRICS, MSG_SAMPLE
    from diversefl.flower.strategy import DiverseFLStrategy, FederationError

Tamper = Callable[[int, Any, Any], Any]


def _node(j: int) -> int:
    """The loopback grid's node id for partition j."""
    return 7000 + 13 * j


def _grid(n: int, tamper: Tamper | None = None) -> Any:
    return _loopback_grid([{"partition-id": j, "num-partitions": n} for j in range(n)], tamper)


def _decisions(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _warnings(caplog: pytest.LogCaptureFixture, *needles: str) -> list[str]:
    """WARNING records whose text contains every needle."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and all(s in r.getMessage() for s in needles)
    ]


def _with_arrays(reply: Any, **arrays: np.ndarray) -> Any:
    """``reply`` with some of its arrays replaced."""
    record = reply.content[ARRAYS]
    new = {k: record[k] for k in record}
    new.update({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    reply.content[ARRAYS] = ArrayRecord(new)
    return reply


def _np(reply: Any, key: str) -> np.ndarray:
    return reply.content[ARRAYS][key].numpy()


def _without(reply: Any, record: str | None = None, array: str | None = None) -> Any:
    content = reply.content
    if record is not None:
        kept = {k: v for k, v in content.items() if k != record}
        return Message(RecordDict(kept), reply_to=_request_of(reply))
    arrays = content[ARRAYS]
    content[ARRAYS] = ArrayRecord({k: arrays[k] for k in arrays if k != array})
    return reply


_REQUESTS: dict[str, Any] = {}


def _request_of(reply: Any) -> Any:
    return _REQUESTS[reply.metadata.reply_to_message_id]


def _meta(reply: Any, **values: Any) -> Any:
    for k, v in values.items():
        reply.content[CONFIG][k] = v
    return reply


def _error(reply: Any, code: int = 2, reason: str = "ClientApp raised ValueError: boom") -> Any:
    return Message(Error(code=code, reason=reason), reply_to=_request_of(reply))


def _on(j: int, kind: str, fault: Callable[[Any], Any], rounds: set[int] | None = None) -> Tamper:
    """A tamper hook applying ``fault`` to node j's replies of one kind (sample or train)."""

    def tamper(node: int, msg: Any, reply: Any) -> Any:
        _REQUESTS[msg.metadata.message_id] = msg
        if node != j:
            return reply
        if kind == "sample" and msg.metadata.message_type != MSG_SAMPLE:
            return reply
        if kind == "train":
            if msg.metadata.message_type != "train":
                return reply
            if rounds is not None and int(msg.content[CONFIG]["server-round"]) not in rounds:
                return reply
        return fault(reply)

    return tamper


# -- A1: the one-time sample ------------------------------------------------------------------
SAMPLE_FAULTS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "no reply": (lambda r: None, "no sample within"),
    "error reply": (_error, "error reply (code 2): ClientApp raised ValueError: boom"),
    "no arrays record": (lambda r: _without(r, record=ARRAYS), "no ArrayRecord 'arrays'"),
    "no config record": (lambda r: _without(r, record=CONFIG), "no ConfigRecord 'config'"),
    "no labels": (lambda r: _without(r, array="y"), "no array 'y'"),
    "no partition id": (
        lambda r: Message(
            RecordDict(
                {
                    ARRAYS: r.content[ARRAYS],
                    CONFIG: type(r.content[CONFIG])(
                        {k: v for k, v in r.content[CONFIG].items() if k != "partition-id"}
                    ),
                }
            ),
            reply_to=_request_of(r),
        ),
        "no 'partition-id'",
    ),
    "length mismatch": (lambda r: _with_arrays(r, y=_np(r, "y")[:-1]), "lengths differ"),
    "x float64": (
        lambda r: _with_arrays(r, x=_np(r, "x").astype(np.float64)),
        "x has dtype float64, expected float32",
    ),
    "y float32": (
        lambda r: _with_arrays(r, y=_np(r, "y").astype(np.float32)),
        "y has dtype float32, expected int64",
    ),
    "NaN in x": (
        lambda r: _with_arrays(
            r,
            x=np.where(np.arange(64).reshape(1, 8, 8) == 5, np.nan, _np(r, "x")).astype(np.float32),
        ),  # noqa: E501
        "NaN or infinite",
    ),
    "label out of range": (
        lambda r: _with_arrays(r, y=np.concatenate([[10], _np(r, "y")[1:]]).astype(np.int64)),
        "..10 outside 0..9",
    ),
    "negative label": (
        lambda r: _with_arrays(r, y=np.concatenate([[-1], _np(r, "y")[1:]]).astype(np.int64)),
        "outside 0..9",
    ),
    "wrong image shape": (
        lambda r: _with_arrays(r, x=np.ascontiguousarray(_np(r, "x")[:, :, :7, :])),
        "x has examples of shape (1, 7, 8), expected (1, 8, 8)",
    ),
    "flat images": (
        lambda r: _with_arrays(r, x=_np(r, "x").reshape(len(_np(r, "x")), -1)),
        "x has shape",
    ),
    "too many examples": (
        lambda r: _with_arrays(
            r,
            x=np.concatenate([_np(r, "x")] * 2),
            y=np.concatenate([_np(r, "y")] * 2),
            idx=np.concatenate([_np(r, "idx"), _np(r, "idx") + 10_000]),
        ),
        "16 examples, but the config asks for 8",
    ),
    "huge sample": (
        lambda r: _with_arrays(r, x=np.zeros((20_000, 1, 8, 8), np.float32)),
        "x has 5120128 bytes, more than the limit",
    ),
    "repeated index": (
        lambda r: _with_arrays(r, idx=np.concatenate([_np(r, "idx")[:1], _np(r, "idx")[:-1]])),
        "repeated training-set indices",
    ),
    "index outside the training set": (
        lambda r: _with_arrays(r, idx=np.concatenate([[10**12], _np(r, "idx")[1:]])),
        "outside the training set",
    ),
    "partition id out of range": (lambda r: _meta(r, **{"partition-id": 7}), "partition-id 7"),
    "partition id not an int": (
        lambda r: _meta(r, **{"partition-id": "2"}),
        "partition-id is '2', expected an integer",
    ),
    "wrong num-partitions": (
        lambda r: _meta(r, **{"num-partitions": 4}),
        "num-partitions 4, but the run has clients.n=5",
    ),
    "wrong batch size": (lambda r: _meta(r, **{"batch-size": 10**6}), "batch-size 1000000"),
    "poisoned images": (
        lambda r: _with_arrays(r, x=(_np(r, "x") * 1000).astype(np.float32)),
        "images differ from the training set's at",
    ),
    "shifted labels": (
        lambda r: _with_arrays(r, y=((_np(r, "y") + 1) % 10).astype(np.int64)),
        "labels differ from the training set's at 8 of 8 examples",
    ),
    "not its seeded sample": (
        lambda r: _with_arrays(r, idx=np.ascontiguousarray(_np(r, "idx")[::-1])),
        "indices are not partition 2's sample",
    ),
    "claims a larger shard": (
        lambda r: _meta(r, **{"shard-len": 1000}),
        "shard-len 1000, but partition 2 holds",
    ),
    "claims a larger shard, keeps its batch size": (
        lambda r: _meta(r, **{"shard-len": 1000}),
        "batch-size 144, but the config gives 500 for a shard of 1000",
    ),
    "shard larger than the training set": (
        lambda r: _meta(r, **{"shard-len": 10**6}),
        "shard-len 1000000 outside 1..1437",
    ),
}
#: Faults only a server holding a copy of the public dataset can see (verify-samples): the
#: sample is well-formed and consistent with the config, but not its partition's seeded draw.
VERIFIED_FAULTS = {
    "poisoned images", "shifted labels", "not its seeded sample", "claims a larger shard",
}  # fmt: skip


@pytest.mark.parametrize("fault", sorted(SAMPLE_FAULTS))
@pytest.mark.slow
def test_bad_sample_excludes_its_node_with_one_warning(fault, tmp_path, caplog):
    make_reply, reason = SAMPLE_FAULTS[fault]
    cfg = make_config(tiny_config(clients={"n": 5}, rounds=2, eval={"every": 1}))
    pushed: list[tuple[int, str]] = []
    inner = _on(2, "sample", make_reply)

    def tamper(node: int, msg: Any, reply: Any) -> Any:
        pushed.append((node, msg.metadata.message_type))
        return inner(node, msg, reply)

    strategy = DiverseFLStrategy(
        cfg, out=tmp_path / "run", timeout=0.5, min_nodes=4,
        verify_samples=fault in VERIFIED_FAULTS,
    )  # fmt: skip
    caplog.set_level(logging.INFO, logger="flwr")
    strategy.start(_grid(5, tamper))
    # one WARNING names the node and the problem
    lines = _warnings(caplog, str(_node(2)))
    assert len(lines) == 1 and f"excluding node {_node(2)}" in lines[0], lines
    assert reason in lines[0]
    fl = strategy.result.summary["flower"]
    assert list(fl["excluded"]) == ["2"] and reason in fl["excluded"]["2"]
    assert reason in fl["sample_rejects"][str(_node(2))]
    assert fl["node_ids"][2] == "" and fl["sample_sizes"][2] == 0
    # never sent a train message; its row is rejected every round, the others are accepted
    assert (2, "train") not in pushed and sum(k == "train" for _, k in pushed) == 4 * 2
    rows = _decisions(tmp_path / "run" / "decisions.csv")
    assert {r["accepted"] for r in rows if r["client"] == "2"} == {"0"}
    assert {r["accepted"] for r in rows if r["client"] != "2"} == {"1"}
    assert strategy.round_metrics[1]["excluded"] == 1
    assert strategy.round_metrics[1]["n-valid"] == 4
    assert torch.isfinite(strategy.federation.theta).all()


def _impostor_of(cfg: Any, j: int) -> Callable[[Any], Any]:
    """A sample-reply fault: claim partition j with partition j's exact seeded sample (a node
    holding the public dataset can compute it), passing every check but the binding."""
    from diversefl.flower.common import load_shard, shared_sample

    sim = Simulation(cfg)  # partition j's true shard: a claim with another length is refused
    claim = {
        "partition-id": j,
        "shard-len": int(sim.shard_len[j]),
        "batch-size": int(sim.batch_k[j]),
    }
    idx, x, y = shared_sample(cfg, load_shard(cfg, j, sim.n))

    def impostor(r: Any) -> Any:
        return _with_arrays(_meta(r, **claim), idx=idx.numpy(), x=x.numpy(), y=y.numpy())

    return impostor


def test_two_nodes_claiming_one_partition_are_both_excluded(caplog):
    """Node 2 uploads partition 1's exact sample (every node holds the public dataset and the
    draw is seeded, so it can): the server cannot tell which node holds partition 1."""
    cfg = make_config(tiny_config(clients={"n": 5}, rounds=1, eval={"every": 1}))
    strategy = DiverseFLStrategy(cfg, timeout=0.5, min_nodes=3)
    caplog.set_level(logging.INFO, logger="flwr")
    strategy.start(_grid(5, _on(2, "sample", _impostor_of(cfg, 1))))
    fl = strategy.result.summary["flower"]
    assert sorted(fl["excluded"]) == ["1", "2"]
    for j in (1, 2):
        claim = f"partition 1 is claimed by nodes {_node(1)}, {_node(2)}"
        assert len(_warnings(caplog, f"excluding node {_node(j)}", claim)) == 1
    assert fl["node_ids"][1] == fl["node_ids"][2] == ""


def test_a_claim_without_the_partitions_sample_leaves_the_owner_in(caplog):
    """With verify-samples, node 2 claiming partition 1 but uploading its own examples is
    refused as an invalid sample, so partition 1's owner keeps its place (only the impostor is
    excluded). Without it, the claim is a second claim: both are excluded
    (test_flower_partitions.py)."""
    cfg = make_config(tiny_config(clients={"n": 5}, rounds=1, eval={"every": 1}))
    strategy = DiverseFLStrategy(cfg, timeout=0.5, min_nodes=3, verify_samples=True)
    caplog.set_level(logging.INFO, logger="flwr")
    sim = Simulation(cfg)
    claim = {
        "partition-id": 1,
        "shard-len": int(sim.shard_len[1]),
        "batch-size": int(sim.batch_k[1]),
    }
    strategy.start(_grid(5, _on(2, "sample", lambda r: _meta(r, **claim))))
    fl = strategy.result.summary["flower"]
    assert sorted(fl["excluded"]) == ["2"]
    assert "indices are not partition 1's sample" in fl["sample_rejects"][str(_node(2))]
    assert fl["node_ids"][1] == str(_node(1))


def test_run_refuses_to_start_with_fewer_usable_nodes_than_min_nodes(tmp_path):
    cfg = make_config(tiny_config(clients={"n": 4}, rounds=2))

    def two_bad(node: int, msg: Any, reply: Any) -> Any:
        return None if node in (0, 3) else reply

    strategy = DiverseFLStrategy(cfg, out=tmp_path / "run", timeout=0.3, min_nodes=3)
    with pytest.raises(FederationError, match="only 2 of 4 nodes sent a usable sample"):
        strategy.start(_grid(4, two_bad))
    assert not (tmp_path / "run" / "metrics.csv").exists()
    # the default minimum is a majority: 2 of 4 suffice
    strategy = DiverseFLStrategy(cfg, timeout=0.3)
    assert strategy.min_nodes == 2
    strategy.start(_grid(4, two_bad))
    assert sorted(strategy.result.summary["flower"]["excluded"]) == ["0", "3"]


def test_min_nodes_must_be_possible():
    cfg = make_config(tiny_config(clients={"n": 4}))
    with pytest.raises(ValueError, match="min_nodes=5"):
        DiverseFLStrategy(cfg, min_nodes=5)


def test_node_that_never_connects_is_excluded_after_the_timeout(caplog):
    cfg = make_config(tiny_config(clients={"n": 4}, rounds=1, eval={"every": 1}))
    three = _loopback_grid([{"partition-id": j, "num-partitions": 4} for j in range(3)])
    strategy = DiverseFLStrategy(cfg, timeout=0.5)
    caplog.set_level(logging.INFO, logger="flwr")
    strategy.start(three)
    assert _warnings(caplog, "only 3 of 4 partitions claimed within 0.5 s (3 nodes connected)")
    fl = strategy.result.summary["flower"]
    assert fl["excluded"] == {"3": "no node sent a sample for it"}
    one = _loopback_grid([{"partition-id": 0, "num-partitions": 4}])
    with pytest.raises(FederationError, match="only 1 of 4 nodes sent a usable sample"):
        DiverseFLStrategy(cfg, timeout=0.3).start(one)


def test_min_nodes_setting_reaches_the_strategy(tmp_path, monkeypatch):
    from diversefl.flower.common import RunSettings
    from diversefl.flower.deploy import DeployError, deploy_local

    assert RunSettings.from_run_config({"min-nodes": 3}).min_nodes == 3
    assert RunSettings.from_run_config({}).min_nodes == 0  # 0: the strategy's default
    # deploy_local refuses min_nodes when the app does not declare the run-config key
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text("[tool.flwr.app.config]\ntimeout = 600.0\n")
    with pytest.raises(DeployError, match="min-nodes = 0"):
        deploy_local("", 4, tmp_path / "out", app_dir=app, min_nodes=3, workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()  # nothing was started


def test_deploy_refuses_an_out_that_holds_a_run(tmp_path, capsys):
    """A second deployment into the same --out does not silently replace the first run."""
    from diversefl.flower.deploy import DeployError, deploy_local
    from diversefl.flower.deploy import main as deploy_main

    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    with pytest.raises(DeployError, match="already holds a run .*--overwrite"):
        deploy_local("", 4, out, workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()  # refused before anything started
    assert (out / "summary.json").read_text() == "{}"  # the old run is untouched
    assert deploy_main(["", "--nodes", "4", "--out", str(out), "--workdir", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err


# -- A2: a round's update -------------------------------------------------------------------
def _theta(r: Any) -> np.ndarray:
    return r.content[ARRAYS]["theta"].numpy()


def _set_theta(r: Any, value: np.ndarray) -> Any:
    r.content[ARRAYS] = ArrayRecord({"theta": Array(np.ascontiguousarray(value))})
    return r


def _nan(r: Any) -> Any:
    t = _theta(r).copy()
    t[3] = np.nan
    return _set_theta(r, t)


def _inf(r: Any) -> Any:
    t = _theta(r).copy()
    t[-1] = -np.inf
    return _set_theta(r, t)


def _junk(r: Any) -> Any:
    r.content[ARRAYS] = ArrayRecord(
        {"theta": r.content[ARRAYS]["theta"], "junk": Array(np.zeros(500_000, np.float32))}
    )
    return r


def _metric(r: Any, **values: Any) -> Any:
    m = r.content[METRICS]
    r.content[METRICS] = MetricRecord({**dict(m), **values})
    return r


UPDATE_FAULTS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "too short": (
        lambda r: _set_theta(r, _theta(r)[:-1]),
        "update has shape (649,), expected (650,)",
    ),  # noqa: E501
    "too long": (
        lambda r: _set_theta(r, np.concatenate([_theta(r), _theta(r)[:1]])),
        "update has shape (651,)",
    ),
    "2-d": (lambda r: _set_theta(r, _theta(r).reshape(65, 10)), "update has shape (65, 10)"),
    "int64": (
        lambda r: _set_theta(r, _theta(r).astype(np.int64)),
        "theta has dtype int64, expected float32",
    ),
    "float16": (
        lambda r: _set_theta(r, _theta(r).astype(np.float16)),
        "theta has dtype float16, expected float32",
    ),
    "float64": (
        lambda r: _set_theta(r, _theta(r).astype(np.float64)),
        "theta has dtype float64, expected float32",
    ),
    "NaN": (_nan, "update has 1 NaN or infinite entries"),
    "inf": (_inf, "update has 1 NaN or infinite entries"),
    "huge values": (
        lambda r: _set_theta(r, np.full(650, 1e30, np.float32)),
        "update has entries beyond 1e+15",
    ),
    "no arrays record": (lambda r: _without(r, record=ARRAYS), "no ArrayRecord 'arrays'"),
    "no metrics record": (lambda r: _without(r, record=METRICS), "no MetricRecord 'metrics'"),
    "no theta": (lambda r: _without(r, array="theta"), "no array 'theta'"),
    "huge message": (
        lambda r: _set_theta(r, np.zeros(650 * 100, np.float32)),
        "bytes, more than the limit of",
    ),
    "huge extra array": (_junk, "bytes, more than the limit of"),
    "error reply": (_error, "error reply (code 2): ClientApp raised ValueError: boom"),
    "no byzantine flag": (
        lambda r: Message(
            RecordDict(
                {
                    ARRAYS: r.content[ARRAYS],
                    METRICS: MetricRecord(
                        {k: v for k, v in r.content[METRICS].items() if k != "byzantine"}
                    ),
                }
            ),
            reply_to=_request_of(r),
        ),
        "no 'byzantine'",
    ),
    "claims another partition": (
        lambda r: _metric(r, **{"partition-id": 0}),
        "reply for partition 0, but the node holds 1",
    ),
}


@pytest.mark.parametrize("fault", sorted(UPDATE_FAULTS))
@pytest.mark.slow
def test_bad_update_is_rejected_logged_and_counted(fault, tmp_path, caplog):
    make_reply, reason = UPDATE_FAULTS[fault]
    cfg = make_config(tiny_config(clients={"n": 5}, rounds=3, eval={"every": 1}))
    strategy = DiverseFLStrategy(cfg, out=tmp_path / "run", timeout=0.5)
    caplog.set_level(logging.INFO, logger="flwr")
    strategy.start(_grid(5, _on(1, "train", make_reply, rounds={2})))
    lines = _warnings(caplog, f"round 2: rejected the update of node {_node(1)} (partition 1)")
    assert len(lines) == 1 and reason in lines[0], lines
    assert not _warnings(caplog, "round 1:") and not _warnings(caplog, "round 3:")
    m = strategy.round_metrics
    assert (m[2]["rejected"], m[2]["n-valid"], m[2]["dropped"]) == (1, 4, 0)
    assert (m[1]["rejected"], m[3]["rejected"]) == (0, 0)
    fl = strategy.result.summary["flower"]
    assert fl["faults"] == [
        {"round": 2, "dropped": [], "rejected": {"1": lines[0].split(": ", 2)[2]}}
    ]
    assert fl["rejected_total"] == 1 and fl["dropped_total"] == 0
    rows = _decisions(tmp_path / "run" / "decisions.csv")
    assert [r["accepted"] for r in rows if r["client"] == "1"] == ["1", "0", "1"]
    assert torch.isfinite(strategy.federation.theta).all()
    assert len(strategy.result.metrics) == 3


def test_rejected_update_leaves_the_mean_of_the_others(tmp_path):
    """The server step of a round with a rejected update is the one without that node."""
    cfg = make_config(tiny_config(clients={"n": 4}, rounds=1, eval={"every": 1}))
    bad = DiverseFLStrategy(cfg, timeout=0.5)
    bad.start(_grid(4, _on(3, "train", lambda r: _set_theta(r, _theta(r).astype(np.int64)))))
    silent = DiverseFLStrategy(cfg, timeout=0.3)
    silent.start(_grid(4, _on(3, "train", lambda r: None)))
    torch.testing.assert_close(bad.federation.theta, silent.federation.theta)


# -- A3: nodes that stop answering ------------------------------------------------------------
@pytest.mark.slow
def test_node_that_stops_answering_is_dropped_and_reported(tmp_path, caplog):
    cfg = make_config(tiny_config(clients={"n": 4}, rounds=4, eval={"every": 2}))
    strategy = DiverseFLStrategy(cfg, out=tmp_path / "run", timeout=0.3)
    caplog.set_level(logging.INFO, logger="flwr")
    t0 = time.perf_counter()
    strategy.start(_grid(4, _on(3, "train", lambda r: None, rounds={2, 3, 4})))
    assert time.perf_counter() - t0 < 30  # the short timeout applies (default: 600 s per round)
    for r in (2, 3, 4):
        assert len(_warnings(caplog, f"round {r}: dropped node {_node(3)} (partition 3)")) == 1
        assert strategy.round_metrics[r]["dropped"] == 1
        assert strategy.round_metrics[r]["n-valid"] == 3
    assert strategy.round_metrics[1]["dropped"] == 0
    fl = strategy.result.summary["flower"]
    assert [f["round"] for f in fl["faults"]] == [2, 3, 4]
    assert all(f["dropped"] == [3] and f["rejected"] == {} for f in fl["faults"])
    assert fl["dropped_total"] == 3
    rows = _decisions(tmp_path / "run" / "decisions.csv")
    assert [r["accepted"] for r in rows if r["client"] == "3"] == ["1", "0", "0", "0"]
    acc = [float(r["test_accuracy"]) for r in strategy.result.metrics]
    assert len(acc) == 2 and all(np.isfinite(acc))


def test_offline_node_error_counts_as_dropped(caplog):
    """The SuperLink answers for a node without heartbeats (NODE_UNAVAILABLE): dropped."""
    cfg = make_config(tiny_config(clients={"n": 4}, rounds=2, eval={"every": 2}))
    strategy = DiverseFLStrategy(cfg, timeout=60.0)
    caplog.set_level(logging.INFO, logger="flwr")
    offline = _on(0, "train", lambda r: _error(r, code=5, reason="Node Unavailable"), {2})
    t0 = time.perf_counter()
    strategy.start(_grid(4, offline))
    assert time.perf_counter() - t0 < 40  # no waiting for the timeout
    assert strategy.round_metrics[2]["dropped"] == 1 and strategy.round_metrics[2]["rejected"] == 0
    assert len(_warnings(caplog, f"round 2: dropped node {_node(0)} (partition 0): offline")) == 1


@pytest.mark.slow
def test_too_few_valid_updates_stop_the_run_and_keep_the_checkpoint(tmp_path):
    raw = tiny_config(clients={"n": 4}, rounds=5, eval={"every": 1, "checkpoint_every": 1})
    cfg = make_config(raw)
    strategy = DiverseFLStrategy(cfg, out=tmp_path / "run", timeout=0.3, min_nodes=3)

    def two_leave(node: int, msg: Any, reply: Any) -> Any:
        late = (
            msg.metadata.message_type == "train" and int(msg.content[CONFIG]["server-round"]) >= 3
        )
        return None if late and node in (1, 2) else reply

    with pytest.raises(FederationError, match=r"round 3: only 2 valid updates .* min-nodes=3"):
        strategy.start(_grid(4, two_leave))
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["round"] == 2
    assert not (tmp_path / "run" / "summary.json").exists()
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [r["round"] for r in rows] == ["1", "2"]
    # once the nodes are back, resume finishes the run as if it had never stopped
    with pytest.raises(RunDirError, match="already holds a run"):
        DiverseFLStrategy(cfg, out=tmp_path / "run", timeout=0.3).start(_grid(4))
    DiverseFLStrategy(cfg, out=tmp_path / "run", timeout=0.3, resume=True).start(_grid(4))
    DiverseFLStrategy(cfg, out=tmp_path / "ref", timeout=0.3).start(_grid(4))

    def metrics(d: str) -> list[dict[str, str]]:
        with (tmp_path / d / "metrics.csv").open() as fh:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]

    assert metrics("run") == metrics("ref") and len(metrics("run")) == 5
    other = make_config({**raw, "rounds": 6})
    with pytest.raises(ValueError, match="resume: the config differs"):
        DiverseFLStrategy(other, out=tmp_path / "run", timeout=0.3, resume=True).start(_grid(4))


# -- B4: a SuperNode killed mid-run (real processes) -------------------------------------------
KILL_CONFIG: dict[str, Any] = {
    "name": "flower-kill",
    "seed": 0,
    "rounds": 2,
    "data": {"dataset": "digits", "partition": "iid"},
    "model": {"name": "softmax"},
    "clients": {"n": 4, "batch": 0.5, "sample": 0.1},
    "optim": {"lr": 0.5, "schedule": "constant", "weight_decay": 0.0},
    "attack": {"name": "none"},
    "aggregator": {"name": "diversefl"},
    "eval": {"every": 1, "checkpoint_every": 1},
}


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_killed_supernode_is_dropped_and_the_run_finishes(tmp_path):
    from diversefl.flower.deploy import LocalFederation, deploy_local

    config = tmp_path / "kill.toml"
    config.write_text(tomli_w.dumps(KILL_CONFIG))
    work = tmp_path / "work"
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_after_round_1(fed: LocalFederation, run_id: int) -> None:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint.pt").exists():  # written at the end of round 1
            assert time.monotonic() < deadline, "round 1 did not finish"
            fed.check_alive()
            time.sleep(0.2)
        killed.append(fed.kill_supernode(3, signal.SIGKILL))

    try:
        res = deploy_local(
            config,
            4,
            out,
            workdir=work,
            timeout=300,
            round_timeout=25,
            on_started=kill_after_round_1,
        )
    finally:
        assert _leftovers(work) == [], "processes survived the deployment"
    assert killed and not os.path.exists(f"/proc/{killed[0]}/cmdline")
    assert res.ok, res.status
    fl = res.summary["flower"]
    assert fl["faults"] == [{"round": 2, "dropped": [3], "rejected": {}}]
    assert fl["dropped_total"] == 1 and fl["excluded"] == {}
    rows = _decisions(out / "decisions.csv")
    assert [r["accepted"] for r in rows if r["client"] == "3"] == ["1", "0"]
    acc = [float(r["test_accuracy"]) for r in _decisions(out / "metrics.csv")]
    assert len(acc) == 2 and acc[-1] > 0.5


def test_declared_attacker_stays_byzantine_when_its_update_is_missing(tmp_path):
    """adversary = "nodes": a node that declared an attack with its sample counts as Byzantine
    in the rounds where its update is dropped or rejected too, so decisions.csv, TPR and FPR
    agree with summary.byzantine_ids."""
    cfg = make_config(
        tiny_config(
            clients={"n": 4},
            aggregator={"name": "diversefl"},
            attack={"name": "sign_flip", "byzantine": [3]},
            rounds=3,
            eval={"every": 1},
        )
    )
    nodes = [{"partition-id": j, "num-partitions": 4} for j in range(4)]
    nodes[3]["attack"] = "sign_flip"
    strategy = DiverseFLStrategy(cfg, out=tmp_path / "run", adversary="nodes", timeout=0.5)
    strategy.start(_loopback_grid(nodes, _on(3, "train", lambda r: None, rounds={2})))
    s = strategy.result.summary
    assert s["byzantine_ids"] == [3]
    rows = _decisions(tmp_path / "run" / "decisions.csv")
    assert [r["byzantine"] for r in rows if r["client"] == "3"] == ["1", "1", "1"]
    assert {r["byzantine"] for r in rows if r["client"] != "3"} == {"0"}
    assert s["mean_tpr"] == 1.0 and s["mean_fpr"] == 0.0


def test_stop_leaves_reaped_pids_alone(tmp_path):
    """stop() signals only live processes of its session: a started process that has already
    been reaped is skipped (its pid may belong to an unrelated process by now)."""
    import subprocess
    import sys

    from diversefl.flower.deploy import LocalFederation

    fed = LocalFederation(tmp_path / "w")
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    fed.procs += [done, running]
    targets = fed._targets()
    assert running.pid in targets and done.pid not in targets
    assert fed.stop(grace=5.0) == []
    assert running.poll() is not None  # stopped


def test_deploy_byzantine_choices_are_checked_before_starting(tmp_path):
    """--byzantine: a bare id means the config's attack in either form; an id outside the
    nodes, or an attack that resolves to "none", is refused before anything starts."""
    import tomli_w

    from diversefl.flower.deploy import DeployError, _parse_byzantine, deploy_local

    assert _parse_byzantine(["3"]) == [3]
    assert _parse_byzantine(["3", "1=gaussian"]) == {3: "", 1: "gaussian"}
    cfg_path = tmp_path / "none.toml"
    cfg_path.write_text(tomli_w.dumps(tiny_config(attack={"name": "none"})))
    work = tmp_path / "w"
    with pytest.raises(DeployError, match="no attack to run"):
        deploy_local(cfg_path, 4, tmp_path / "out", byzantine=[3], workdir=work)
    with pytest.raises(DeployError, match="no attack to run"):
        deploy_local(cfg_path, 4, tmp_path / "out", byzantine={3: "", 1: "gaussian"}, workdir=work)
    with pytest.raises(DeployError, match="partition ids are 0..3"):
        deploy_local(cfg_path, 4, tmp_path / "out", byzantine={7: "sign_flip"}, workdir=work)
    with pytest.raises(DeployError, match="byzantine node 2: attack 'alie' is built from the"):
        deploy_local(cfg_path, 4, tmp_path / "out", byzantine={2: "alie"}, workdir=work)
    assert not work.exists()


def test_stop_signals_unwind_while_deploying_and_handlers_are_restored():
    """SIGTERM / SIGHUP raise KeyboardInterrupt inside a deployment (so its finally stops every
    process), a caller's own handler is left alone, and the old handlers come back after."""
    import signal

    from diversefl.flower.deploy import _catch_stop_signals

    def mine(signum, frame):  # a caller's handler
        return None

    old_term = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    old_hup = signal.signal(signal.SIGHUP, mine)
    try:
        restore = _catch_stop_signals()
        assert signal.getsignal(signal.SIGHUP) is mine
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        restore()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        assert signal.getsignal(signal.SIGHUP) is mine
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGHUP, old_hup)


@pytest.mark.slow
def test_wait_survives_a_failed_status_poll(tmp_path, monkeypatch):
    """One `flwr ls` that fails or hangs does not abort a healthy deployment: the launcher
    polls again, and reports the last failure only if the run never finishes."""
    import subprocess

    from diversefl.flower.deploy import DeployError, LocalFederation

    fed = LocalFederation(tmp_path / "w")
    done = tmp_path / "summary.json"
    done.write_text("{}")
    answers = [DeployError("flwr ls local failed: connection reset"),
               subprocess.TimeoutExpired("flwr", 5), "finished:completed"]  # fmt: skip

    def status(run_id, timeout=120.0):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(fed, "status", status)
    assert fed.wait(1, timeout=30, done=done) == "finished:completed"
    monkeypatch.setattr(fed, "status", lambda run_id, timeout=120.0: (_ for _ in ()).throw(
        DeployError("flwr ls local failed: down")))  # fmt: skip
    with pytest.raises(DeployError, match="status poll failed: DeployError flwr ls local failed"):
        fed.wait(1, timeout=3, done=done)


@pytest.mark.parametrize(
    "value",
    ['name="my run";rounds=5', 'attack.name="adaptive"', "plain", "with space", 3, 2.5, True, ""],
)
def test_config_args_round_trip_through_flowers_parser(value):
    """What deploy-local passes as --run-config / --node-config reads back unchanged with
    Flower's own parser, quotes included (--set 'name="my run"' used to break it)."""
    from flwr.common.config import parse_config_args

    from diversefl.flower.deploy import config_args

    values = {"overrides": value, "out": "/tmp/x y", "timeout": 600.0}
    assert parse_config_args([config_args(values)]) == values


def test_config_value_with_both_quotes_is_refused_by_name():
    from diversefl.flower.deploy import DeployError, config_args

    with pytest.raises(DeployError, match="both kinds of quote"):
        config_args({"overrides": """name="it's mine\""""})


def test_node_partitions_binding_stops_an_impostor(caplog):
    """With the operator's node -> partition binding, node 2 uploading partition 1's exact
    sample is refused (it is bound to partition 2), and partition 1's owner stays in."""
    from diversefl.flower.common import RunSettings

    cfg = make_config(tiny_config(clients={"n": 5}, rounds=1, eval={"every": 1}))
    binding = RunSettings(node_partitions=", ".join(f"{_node(j)}:{j}" for j in range(5)))
    strategy = DiverseFLStrategy(
        cfg, timeout=0.5, min_nodes=3, node_partitions=binding.partition_map()
    )
    caplog.set_level(logging.INFO, logger="flwr")
    strategy.start(_grid(5, _on(2, "sample", _impostor_of(cfg, 1))))
    fl = strategy.result.summary["flower"]
    assert sorted(fl["excluded"]) == ["2"]
    assert (
        f"claims partition 1, but node-partitions binds node {_node(2)} to partition 2"
        in fl["sample_rejects"][str(_node(2))]
    )
    assert fl["node_ids"][1] == str(_node(1))
    # a node outside the binding is refused too
    partial = {_node(j): j for j in range(4)}
    strategy = DiverseFLStrategy(cfg, timeout=0.5, min_nodes=3, node_partitions=partial)
    strategy.start(_grid(5))
    fl = strategy.result.summary["flower"]
    assert fl["sample_rejects"][str(_node(4))] == f"node {_node(4)} is not in node-partitions"


def test_node_partitions_setting_is_parsed_and_checked():
    from diversefl.flower.common import RunSettings

    s = RunSettings.from_run_config({"node-partitions": "101:0, 202:1"})
    assert s.partition_map() == {101: 0, 202: 1}
    assert RunSettings.from_run_config({}).partition_map() is None
    for bad, needle in (("101-0", "'101-0' is not NODE_ID:PARTITION"),
                        ("101:0,101:1", "node 101 is listed twice")):  # fmt: skip
        with pytest.raises(ValueError, match=needle):
            RunSettings(node_partitions=bad).partition_map()
    cfg = make_config(tiny_config(clients={"n": 5}))
    with pytest.raises(ValueError, match="partitions are 0..4"):
        DiverseFLStrategy(cfg, node_partitions={1: 7})
    with pytest.raises(ValueError, match="assigns a partition twice"):
        DiverseFLStrategy(cfg, node_partitions={1: 0, 2: 0})


@pytest.mark.slow
def test_round_grace_ends_a_round_soon_after_the_quorum(tmp_path, caplog):
    """A node that stays connected but never answers: with round_grace, each round waits
    only that long after min_nodes replies instead of the whole timeout, and the silent node
    is dropped as before."""
    cfg = make_config(tiny_config(clients={"n": 4}, rounds=3, eval={"every": 3}))
    silent = _on(3, "train", lambda r: None)
    timed = {}
    for grace in (0.0, 0.05):
        strategy = DiverseFLStrategy(cfg, timeout=3.0, min_nodes=3, round_grace=grace)
        t0 = time.perf_counter()
        strategy.start(_grid(4, silent))
        timed[grace] = time.perf_counter() - t0
        assert all(strategy.round_metrics[r]["dropped"] == 1 for r in (1, 2, 3))
        assert strategy.result.summary["flower"]["dropped_total"] == 3
    assert timed[0.0] > 3 * 3.0  # without a grace every round waits out the timeout
    # with it, about 0.05 s a round: 9 s less, less the two runs' compute jitter (3 s of slack
    # on a loaded machine)
    assert timed[0.05] < timed[0.0] - 6.0
    with pytest.raises(ValueError, match="round_grace=-1"):
        DiverseFLStrategy(cfg, round_grace=-1)
    from diversefl.flower.common import RunSettings

    assert RunSettings.from_run_config({"round-grace": 2.5}).round_grace == 2.5
