"""Flower deployment: client replay of the simulator, the one-time sample upload, the strategy
through an in-process loopback grid, Flower's simulation runtime and a localhost deployment
(SuperLink + SuperNodes). The last two start real processes and are marked slow."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import torch
from conftest import tiny_config

import diversefl
from diversefl.config import make_config
from diversefl.engine.simulator import Simulation
from diversefl.flower import FLOWER_AVAILABLE
from diversefl.flower.common import Role, client_update, load_shard, shared_sample

needs_flwr = pytest.mark.skipif(
    not FLOWER_AVAILABLE, reason='flwr is not installed: pip install -e ".[flower]"'
)


def _decisions(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _agreement(a: list[dict[str, str]], b: list[dict[str, str]]) -> float:
    """Share of (round, client) pairs with the same Byzantine flag and decision."""
    assert [(r["round"], r["client"]) for r in a] == [(r["round"], r["client"]) for r in b]
    same = sum(
        x["accepted"] == y["accepted"] and x["byzantine"] == y["byzantine"]
        for x, y in zip(a, b, strict=True)
    )
    return same / len(a)


# -- a client reproduces the simulator's computation (no Flower needed) -----------------------
@pytest.mark.parametrize(
    "aggregator,attack",
    [
        ({"name": "diversefl"}, {"name": "sign_flip", "f": 2}),
        ({"name": "noisy_median", "sigma": 0.01}, {"name": "gaussian", "f": 2, "sigma": 10.0}),
        ({"name": "diversefl"}, {"name": "label_flip", "f": 2}),
        ({"name": "mean"}, {"name": "same_value", "f": 2, "sigma": 3.0}),
    ],
)
def test_client_replays_its_row_of_the_simulator(aggregator, attack):
    cfg = make_config(
        tiny_config(model={"name": "mlp"}, aggregator=aggregator, attack=attack, clients={"n": 6})
    )
    sim = Simulation(cfg)
    r = 3
    byz = sim.byzantine_mask(r)
    expected = sim.client_updates(r, byz, sim.context(r, byz))
    ranks = (torch.cumsum(byz.long(), 0) - 1).tolist()
    params = {k: v for k, v in attack.items() if k not in ("name", "f")}
    for j in range(sim.n):
        shard = load_shard(cfg, j, sim.n)
        role = Role(attack["name"], params, ranks[j], sim.f) if byz[j] else Role()
        got = client_update(cfg, shard, sim.theta, r, role)
        torch.testing.assert_close(got, expected[j], rtol=1e-5, atol=1e-6)


def test_adaptive_node_passes_the_servers_test_with_its_own_guide():
    """A deployed adaptive node computes its guiding gradient on the sample it shared (the
    server's, to float rounding) and rotates it toward minus its own gradient: the message
    passes DiverseFL's test against the guide the simulator computes for that client, and it
    is not the node's gradient."""
    from diversefl.aggregators.diversefl import diversefl_accept, diversefl_scores

    cfg = make_config(
        tiny_config(model={"name": "mlp"}, aggregator={"name": "diversefl"},
                    attack={"name": "adaptive", "f": 2}, clients={"n": 6})
    )  # fmt: skip
    sim = Simulation(cfg)
    for r in (1, 4):
        byz = sim.byzantine_mask(r)
        ctx = sim.context(r, byz)
        ids = torch.nonzero(byz).flatten().tolist()
        for rank, j in enumerate(ids):
            shard = load_shard(cfg, j, sim.n)
            sent = client_update(cfg, shard, sim.theta, r, Role("adaptive", {}, rank, sim.f))
            honest = client_update(cfg, shard, sim.theta, r, Role())
            c1, c2 = diversefl_scores(ctx.guiding[j][None], sent[None])
            assert bool(diversefl_accept(c1, c2, 0.5, 2.0)[0]), (r, j, float(c1), float(c2))
            assert float(c2[0]) == pytest.approx(1.95, rel=1e-4)  # top of the band
            cos = torch.nn.functional.cosine_similarity(sent, honest, dim=0)
            assert float(cos) < 0.5  # turned away from its true gradient


def test_attacks_a_node_cannot_carry_out_are_refused():
    """ALIE, Min-Max and Min-Sum read the other clients' updates; a node alone would send its
    own gradient, so the deployment refuses them, naming the attack."""
    from diversefl.flower.common import node_role

    cfg = make_config(tiny_config(attack={"name": "none", "f": 1}))
    for name in ("alie", "min_max", "min_sum"):
        with pytest.raises(ValueError, match=f"attack '{name}' is built from the honest"):
            node_role(cfg, {"attack": name}, {})
    assert node_role(cfg, {"attack": "ipm"}, {}).attack == "ipm"  # -epsilon x its own
    assert node_role(cfg, {"attack": "adaptive"}, {}).attack == "adaptive"


def test_deploy_refuses_an_attack_a_node_cannot_carry_out(tmp_path):
    from diversefl.flower.deploy import DeployError, byzantine_nodes

    path = tmp_path / "alie.toml"
    path.write_text(tomli_w.dumps(tiny_config(attack={"name": "alie", "f": 1})))
    with pytest.raises(DeployError, match="attack 'alie' is built from the honest"):
        byzantine_nodes(path, [], None)


def test_client_sample_is_the_simulators():
    cfg = make_config(tiny_config(clients={"n": 5, "sample": 0.1}))
    sim = Simulation(cfg)
    for j in range(sim.n):
        idx, x, y = shared_sample(cfg, load_shard(cfg, j, sim.n))
        s = int(sim.sample_w[j].sum())
        assert torch.equal(idx, sim.sample_idx[j, :s])
        assert torch.equal(x, sim.x_train[idx]) and torch.equal(y, sim.y_train[idx])


@needs_flwr
@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize("loss", ["mean", "sum"])
def test_server_root_gradient_is_the_simulators(loss, verify):
    """FLTrust's root gradient on the Flower server (from uploaded samples only) equals the
    simulator's on the same training examples, on the clients' scale for either loss. The
    pooled examples are named by their training-set indices when the server verified them
    (exactly the simulator's ctx.shared_samples), else by their positions in the pool."""
    from diversefl.flower.reference import ReferenceData
    from diversefl.flower.replies import SharedSample
    from diversefl.flower.samples import Roster
    from diversefl.flower.strategy import FlowerFederation

    cfg = make_config(tiny_config(clients={"n": 5, "sample": 0.2, "loss": loss}))
    sim = Simulation(cfg)
    fed = FlowerFederation(cfg, reference=ReferenceData(cfg) if verify else None)
    roster = Roster(5)
    for j in range(5):
        shard = load_shard(cfg, j, 5)
        idx, x, y = shared_sample(cfg, shard)
        roster.claim(SharedSample(
            node_id=100 + j, partition_id=j, indices=idx, x=x, y=y, attack="none",
            shard_len=int(sim.shard_len[j]), batch_size=int(sim.batch_k[j]),
        ))  # fmt: skip
    fed.install(roster)
    pooled = sim.sample_idx[sim.sample_w > 0]  # the simulator's, partition by partition
    keys = fed.context(1, torch.zeros(5, dtype=torch.bool)).shared_samples
    assert torch.equal(keys, pooled if verify else torch.arange(len(pooled)))
    picks = torch.arange(0, len(pooled), 3)  # some of the uploaded examples
    theta = torch.randn_like(sim.theta) * 0.1
    want = sim.server_gradient(theta, pooled[picks])
    torch.testing.assert_close(fed.server_gradient(theta, keys[picks]), want)
    if loss == "sum":  # m times the mean-loss gradient (m = the clients' mean batch)
        assert float(sim.loss_scale.mean()) > 1
        torch.testing.assert_close(fed.loss_scale, sim.loss_scale)
    missing = len(pooled) + 1
    if verify:  # a training example nobody uploaded
        missing = sorted(set(range(sim.x_train.shape[0])) - set(pooled.tolist()))[0]
    with pytest.raises(ValueError, match="only holds the uploaded samples"):
        fed.server_gradient(theta, torch.cat([keys[:2], torch.tensor([missing])]))


def test_partition_count_must_match_the_config():
    cfg = make_config(tiny_config(clients={"n": 5}))
    with pytest.raises(ValueError, match="num-partitions=4"):
        load_shard(cfg, 0, 4)


# -- the strategy and ClientApp through an in-process grid -----------------------------------
def _loopback_grid(node_configs: list[dict[str, Any]], tamper: Any = None) -> Any:
    """A Grid that hands each message straight to the ClientApp (no SuperLink, no processes).

    ``tamper(j, message, reply)``, when given, sees node j's reply (j: the index in
    ``node_configs``) and returns the reply to deliver instead, or None for no reply at all.
    """
    from flwr.app import Context, Message, RecordDict
    from flwr.serverapp import Grid
    from flwr.supercore.task_identity import TaskIdentity

    from diversefl.flower.client_app import app

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    class LoopbackGrid(Grid):
        def __init__(self) -> None:
            self.nodes = {7000 + 13 * j: dict(c) for j, c in enumerate(node_configs)}
            self.replies: dict[str, Message] = {}
            self._run = None

        def set_run(self, run: Any) -> None:
            self._run = run

        @property
        def run(self) -> Any:
            return self._run

        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
            return Message(
                content=content,
                dst_node_id=dst_node_id,
                message_type=message_type,
                group_id=group_id,
            )

        def get_node_ids(self) -> list[int]:
            return list(self.nodes)

        def push_messages(self, messages):
            ids = []
            for msg in messages:
                msg.metadata.__dict__["_message_id"] = msg.object_id
                node = msg.metadata.dst_node_id
                ctx = Context(
                    run_id=1,
                    node_id=node,
                    node_config=self.nodes[node],
                    state=RecordDict(),
                    run_config={},
                )
                try:
                    reply = app(msg, ctx)
                except Exception as err:  # as Flower does: the node's exception, as an error
                    from flwr.app import Error
                    from flwr.common.constant import ErrorCode

                    reason = f"{type(err).__name__}: {err}"
                    error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
                    reply = Message(error=error, reply_to=msg)
                if tamper is not None:
                    reply = tamper((node - 7000) // 13, msg, reply)
                if reply is not None:
                    self.replies[msg.object_id] = reply
                ids.append(msg.object_id)
            return ids

        def pull_messages(self, message_ids):
            return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

        def send_and_receive(self, messages, *, timeout=None):
            return self.pull_messages(self.push_messages(messages))

    return LoopbackGrid()


@needs_flwr
def test_one_time_sample_upload_holds_s_examples_from_each_partition():
    from diversefl.flower.common import sample_count
    from diversefl.flower.strategy import DiverseFLStrategy

    cfg = make_config(tiny_config(clients={"n": 5, "sample": 0.1}))
    grid = _loopback_grid([{"partition-id": j, "num-partitions": 5} for j in range(5)])
    strategy = DiverseFLStrategy(cfg)
    samples = strategy.collect_samples(grid)
    sim = Simulation(cfg)
    assert len(samples) == 5
    assert sorted(s.partition_id for s in samples.values()) == list(range(5))
    for node, s in samples.items():
        j = s.partition_id
        shard = set(sim.shards[j, : sim.shard_len[j]].tolist())
        assert s.node_id == node
        assert len(s.indices) == len(s.y) == s.x.shape[0] == sample_count(cfg, len(shard))
        assert set(s.indices.tolist()) <= shard  # from that client's own partition
        assert len(set(s.indices.tolist())) == len(s.indices)
        assert torch.equal(s.x, sim.x_train[s.indices]) and torch.equal(s.y, sim.y_train[s.indices])
    # the server's guiding inputs are exactly these samples, ordered by partition
    fed = strategy.federation
    node_ids = fed.roster.node_ids()
    assert node_ids == [n for n, _ in sorted(samples.items(), key=lambda kv: kv[1].partition_id)]
    assert fed.pool.sizes == [len(samples[n].y) for n in node_ids]
    for j, node in enumerate(node_ids):
        s = len(samples[node].y)
        assert torch.equal(fed.pool.x[j, :s], samples[node].x)
        assert torch.equal(fed.pool.y[j, :s], samples[node].y)


@needs_flwr
def test_strategy_over_loopback_grid_matches_diversefl_run(tmp_path):
    from diversefl.flower.strategy import DiverseFLStrategy

    raw = tiny_config(
        model={"name": "mlp"},
        aggregator={"name": "diversefl"},
        attack={"name": "gaussian", "f": 2, "sigma": 1.0},
        rounds=6,
        eval={"every": 3},
    )
    cfg = make_config(raw)
    grid = _loopback_grid([{"partition-id": j, "num-partitions": 6} for j in range(6)])
    strategy = DiverseFLStrategy(cfg, out=tmp_path / "flower")
    result = strategy.start(grid)
    ref = diversefl.run(cfg, out=tmp_path / "ref")
    for name in ("config.toml", "metrics.csv", "decisions.csv", "summary.json"):
        assert (tmp_path / "flower" / name).exists(), name
    a, b = (
        _decisions(tmp_path / "flower" / "decisions.csv"),
        _decisions(tmp_path / "ref" / "decisions.csv"),
    )
    assert _agreement(a, b) == 1.0
    for x, y in zip(a, b, strict=True):  # the Byzantine noise is the same draw: scores agree too
        assert float(x["c2"]) == pytest.approx(float(y["c2"]), rel=1e-4)
        assert x["c1"] == y["c1"]
    s = strategy.result.summary
    assert abs(s["final_test_accuracy"] - ref.summary["final_test_accuracy"]) <= 0.005
    assert s["byzantine_ids"] == ref.summary["byzantine_ids"]
    assert max(result.evaluate_metrics_serverapp) == cfg.rounds
    assert s["flower"]["sample_sizes"] == [8] * 6


@needs_flwr
def test_node_config_attack_overrides_and_is_reported():
    from diversefl.flower.strategy import DiverseFLStrategy

    cfg = make_config(
        tiny_config(
            clients={"n": 4},
            aggregator={"name": "diversefl"},
            attack={"name": "sign_flip", "byzantine": [2]},
            rounds=2,
            eval={"every": 1},
        )
    )
    nodes = [{"partition-id": j, "num-partitions": 4} for j in range(4)]
    nodes[2]["attack"] = "sign_flip"
    strategy = DiverseFLStrategy(cfg, adversary="nodes")
    strategy.start(_loopback_grid(nodes))
    s = strategy.result.summary
    assert s["byzantine_ids"] == [2] and s["mean_tpr"] == 1.0


@needs_flwr
def test_max_inflight_bounds_outstanding_messages():
    from diversefl.flower.strategy import DiverseFLStrategy

    cfg = make_config(tiny_config(clients={"n": 5}, rounds=2, eval={"every": 2}))
    grid = _loopback_grid([{"partition-id": j, "num-partitions": 5} for j in range(5)])
    sizes: list[int] = []
    push = grid.push_messages

    def recording_push(messages):
        messages = list(messages)
        sizes.append(len(messages))
        return push(messages)

    grid.push_messages = recording_push
    strategy = DiverseFLStrategy(cfg, max_inflight=2)
    strategy.start(grid)
    assert max(sizes) <= 2 and sum(sizes) == 5 * (1 + cfg.rounds)
    ref = diversefl.run(cfg, out=False)
    assert strategy.result.summary["final_test_accuracy"] == ref.summary["final_test_accuracy"]


@needs_flwr
def test_protocols_are_refused():
    from diversefl.flower.strategy import DiverseFLStrategy

    cfg = make_config(tiny_config(aggregator={"name": "rsa"}))
    with pytest.raises(ValueError, match="protocol"):
        DiverseFLStrategy(cfg)
    cfg = make_config(tiny_config(attack={"name": "min_sum", "f": 1}))
    with pytest.raises(ValueError, match="attack 'min_sum' is built from the honest"):
        DiverseFLStrategy(cfg)


@needs_flwr
@pytest.mark.slow
def test_adaptive_nodes_pass_diversefl_over_a_loopback_grid():
    """Byzantine nodes running the adaptive attack are accepted by the server in every round
    (TPR 0): the guide a node computes on its sample is the server's."""
    from diversefl.flower.strategy import DiverseFLStrategy

    cfg = make_config(
        tiny_config(model={"name": "mlp"}, aggregator={"name": "diversefl"},
                    attack={"name": "adaptive", "f": 2}, clients={"n": 6}, rounds=4,
                    eval={"every": 2})
    )  # fmt: skip
    strategy = DiverseFLStrategy(cfg)
    strategy.start(_loopback_grid([{"partition-id": j, "num-partitions": 6} for j in range(6)]))
    s = strategy.result.summary
    assert len(s["byzantine_ids"]) == 2 and s["mean_tpr"] == 0.0


# -- real processes: Flower's simulation runtime and a localhost deployment --------------------
def _leftovers(workdir: Path) -> list[int]:
    """Live processes whose working directory is inside ``workdir`` (what the launcher
    started, and their children)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cwd.startswith(str(workdir)) and state != "Z":
            out.append(int(entry.name))
    return out


def _write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(raw))
    return path


DEPLOY_CONFIG: dict[str, Any] = {
    "name": "flower-digits",
    "seed": 0,
    "rounds": 5,
    "data": {"dataset": "digits", "partition": "iid"},
    "model": {"name": "softmax"},
    "clients": {"n": 4, "batch": 0.5, "sample": 0.1},
    "optim": {"lr": 0.5, "schedule": "constant", "weight_decay": 0.0},
    "attack": {"name": "sign_flip", "byzantine": [3]},
    "aggregator": {"name": "diversefl"},
    "eval": {"every": 1},
}


@needs_flwr
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_localhost_deployment_rejects_the_sign_flipper(tmp_path):
    from diversefl.flower.deploy import deploy_local

    config = _write_config(tmp_path / "deploy.toml", DEPLOY_CONFIG)
    work = tmp_path / "work"
    try:
        res = deploy_local(
            config, 4, tmp_path / "out", byzantine={3: "sign_flip"}, workdir=work, timeout=780
        )
    finally:
        assert _leftovers(work) == [], "processes survived the deployment"
    assert res.ok, res.status
    assert not [p for p in res.pids if Path(f"/proc/{p}").exists() and p in _leftovers(work)]
    s = res.summary
    assert s["flower"]["adversary"] == "nodes" and len(set(s["flower"]["node_ids"])) == 4
    assert s["byzantine_ids"] == [3]
    rows = _decisions(res.out / "decisions.csv")
    byz_rows = [r for r in rows if r["client"] == "3"]
    assert len(byz_rows) == 5 and all(
        r["byzantine"] == "1" and r["accepted"] == "0" for r in byz_rows
    )
    acc = [float(r["test_accuracy"]) for r in _decisions(res.out / "metrics.csv")]
    initial = Simulation(make_config(DEPLOY_CONFIG)).evaluate()["test_accuracy"]
    assert len(acc) == 5 and acc[-1] > acc[0] and acc[-1] > initial + 0.3
    # the same config in-process: same decisions, same accuracy
    ref = diversefl.run(make_config(DEPLOY_CONFIG), out=tmp_path / "ref")
    assert _agreement(rows, _decisions(tmp_path / "ref" / "decisions.csv")) >= 0.99
    assert abs(s["final_test_accuracy"] - ref.summary["final_test_accuracy"]) <= 0.005


AGREE_CONFIG: dict[str, Any] = {
    "name": "flower-agreement",
    "seed": 1,
    "rounds": 10,
    "data": {"dataset": "digits", "partition": "sorted"},
    "model": {"name": "mlp"},
    "clients": {"n": 6, "batch": 0.5, "sample": 0.1},
    "optim": {"lr": 0.2, "schedule": "constant", "weight_decay": 0.0005},
    "attack": {"name": "gaussian", "f": 2, "sigma": 1.0},
    "aggregator": {"name": "diversefl"},
    "eval": {"every": 5},
}


@needs_flwr
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_simulation_runtime_agrees_with_diversefl_run(tmp_path):
    from diversefl.flower.deploy import deploy_local

    config = _write_config(tmp_path / "agree.toml", AGREE_CONFIG)
    work = tmp_path / "work"
    try:
        res = deploy_local(
            config, 6, tmp_path / "out", runtime="simulation", workdir=work, timeout=780
        )
    finally:
        assert _leftovers(work) == [], "processes survived the simulation run"
    ref = diversefl.run(make_config(AGREE_CONFIG), out=tmp_path / "ref")
    a = _decisions(res.out / "decisions.csv")
    b = _decisions(tmp_path / "ref" / "decisions.csv")
    assert _agreement(a, b) >= 0.99
    assert abs(res.summary["final_test_accuracy"] - ref.summary["final_test_accuracy"]) <= 0.005
    assert res.summary["byzantine_ids"] == ref.summary["byzantine_ids"]


@needs_flwr
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_failed_run_is_reported_and_stops_everything(tmp_path):
    from diversefl.flower.deploy import DeployError, deploy_local

    raw = {
        **DEPLOY_CONFIG,
        "aggregator": {"name": "rsa"},  # a protocol: refused before any process starts
        "attack": {"name": "none"},
        "clients": {"n": 2, "batch": 0.5, "sample": 0.1},
        "rounds": 1,
    }
    config = _write_config(tmp_path / "bad.toml", raw)
    work = tmp_path / "work"
    with pytest.raises(DeployError, match="is a protocol"):
        deploy_local(config, 2, tmp_path / "out", byzantine=[], workdir=work, timeout=400)
    assert _leftovers(work) == []


def test_node_refuses_to_share_more_than_its_max_sample():
    """A node's own cap on its one-time sample: the server's config cannot ask for more."""
    from diversefl.flower.common import config_to_text, handle_sample, sample_count

    cfg = make_config(tiny_config(clients={"n": 5, "sample": 0.2}))
    text = config_to_text(cfg)
    node = {"partition-id": 1, "num-partitions": 5}
    shard = load_shard(cfg, 1, 5)
    asked = sample_count(cfg, int(shard.indices.numel()))
    assert len(handle_sample(text, {**node, "max-sample": asked})["idx"]) == asked
    assert len(handle_sample(text, {**node, "max-sample": 0.2})["idx"]) == asked
    with pytest.raises(ValueError, match=rf"asks for a sample of {asked} examples.*allows 3"):
        handle_sample(text, {**node, "max-sample": 3})
    with pytest.raises(ValueError, match="max-sample=0"):
        handle_sample(text, {**node, "max-sample": 0})
