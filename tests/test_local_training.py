"""FedAvg-style local training (``clients.local_steps`` / ``local_epochs``) and the server's
heavy-ball momentum, checked against plain per-client loops (a fresh nn.Module per client,
``torch.optim.SGD``), hand computations and whole runs."""

from __future__ import annotations

import copy
import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
import torch
import torch.nn.functional as F
from conftest import tiny_config
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import diversefl
from diversefl.config import ConfigError, make_config
from diversefl.engine.local_training import local_pseudo_gradients, step_counts
from diversefl.engine.seeding import generator
from diversefl.engine.server_step import ServerMomentum, server_step
from diversefl.engine.simulator import Simulation, draw_without_replacement
from diversefl.round import Aggregate, RoundContext

# float32 throughout: E steps of a batched call against E steps of one nn.Module per client
# agree to float rounding, and the pseudo-gradient divides the model delta by lr
TOL = {"rtol": 1e-4, "atol": 1e-5}

DIRICHLET = {"dataset": "digits", "partition": "dirichlet"}  # unequal shards: 122 ... 395


def _sim(**sections) -> Simulation:
    return Simulation(make_config(tiny_config(**sections)))


def _fresh_module(sim: Simulation, theta: torch.Tensor) -> torch.nn.Module:
    module = copy.deepcopy(sim.fm.module)
    vector_to_parameters(theta.clone(), module.parameters())
    return module


def _plain_local_sgd(sim, theta, batch, steps, lr) -> torch.Tensor:
    """Reference: client by client, a fresh module and ``torch.optim.SGD``, ``steps[j]``
    steps on ``batch(j, s)``; returns ``(theta - theta_E) / lr`` per client."""
    rows = []
    for j in range(sim.n):
        module = _fresh_module(sim, theta)
        opt = torch.optim.SGD(module.parameters(), lr=lr)
        for s in range(int(steps[j])):
            x, y = batch(j, s)
            opt.zero_grad()
            loss = F.cross_entropy(module(x), y) * sim.loss_scale[j]
            loss.backward()
            opt.step()
        rows.append((theta - parameters_to_vector(module.parameters()).detach()) / lr)
    return torch.stack(rows)


def _client_batch(sim: Simulation, r: int, flip: torch.Tensor | None = None):
    """``batch(j, s)``: client j's examples of local step s in round r, drawn here from the
    documented keys (seed, "batch", r) for step 0 and (seed, "batch", r, s) after it; labels
    of the clients in ``flip`` mapped c -> C - 1 - c (label flip)."""

    def batch(j: int, s: int):
        if sim._whole_shards is not None:
            idx = sim.shards[j, : int(sim.shard_len[j])]
        else:
            keys = ("batch", r) if s == 0 else ("batch", r, s)
            gen = generator(sim.cfg.seed, *keys)
            width = sim.shards.shape[1]
            pos, w = draw_without_replacement(sim.shard_len, sim.batch_k, gen, width)
            idx = sim.shards[j, pos[j][w[j] > 0]]
        y = sim.y_train[idx]
        if flip is not None and bool(flip[j]):
            y = sim.data.num_classes - 1 - y
        return sim.x_train[idx], y

    return batch


@pytest.mark.parametrize(
    "model,clients",
    [
        ("softmax", {"local_steps": 3, "local_lr": 0.2}),
        ("mlp", {"local_steps": 4, "batch": 30, "loss": "sum", "local_lr": 0.005}),
        ("mlp", {"local_epochs": 1.0, "batch": 40}),  # 4 .. 10 steps per client
    ],
)
def test_batched_local_steps_equal_a_plain_per_client_loop(model, clients):
    sim = _sim(model={"name": model}, data=DIRICHLET, clients=clients)
    r = 3
    sim.theta = sim.theta + 0.05 * torch.randn(sim.theta.shape, generator=generator(1, "t"))
    byz = torch.zeros(sim.n, dtype=torch.bool)
    got = sim.client_updates(r, byz, sim.context(r, byz))
    lr = clients.get("local_lr", sim.schedule(r))
    want = _plain_local_sgd(sim, sim.theta, _client_batch(sim, r), sim.local_steps, lr)
    torch.testing.assert_close(got, want, **TOL)
    assert float((got - sim.client_gradients(r, byz, sim.context(r, byz))).abs().max()) > 1e-3


def test_clients_that_finish_early_stay_put():
    """The epoch form gives each client its own count; a client past its count keeps its
    model, whatever the others still do (checked on the pure function with a linear model
    whose gradient at every step is known: g(theta_j) = theta_j - target_j)."""
    target = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    steps = torch.tensor([1, 3, 2])
    lr = 0.5
    calls = []

    def grads_at(models, s, rows):
        calls.append((s, None if rows is None else rows.tolist()))
        t = target if rows is None else target[rows]
        return models - t  # step 0: the shared model broadcast against every target

    theta = torch.zeros(2)
    got = local_pseudo_gradients(theta, grads_at, steps, lr)
    # by hand: theta_{s+1} = theta_s - 0.5 (theta_s - t) = (theta_s + t) / 2, from 0:
    # 1 step: t / 2 (sent: the gradient -t); 2 steps: 3t / 4; 3 steps: 7t / 8
    want = torch.stack([-target[0], -(7 / 8) * target[1] / lr, -(3 / 4) * target[2] / lr])
    torch.testing.assert_close(got, want)
    assert calls == [(0, None), (1, [1, 2]), (2, [1])]


def test_epoch_form_counts_steps_per_client_on_unequal_shards():
    sim = _sim(data=DIRICHLET, clients={"local_epochs": 1.5, "batch": 40})
    lens = sim.shard_len.tolist()
    assert lens == [122, 231, 395, 246, 182, 261]  # the unequal shards the counts are for
    # ceil(1.5 * L / 40) by hand: 183/40, 346.5/40, 592.5/40, 369/40, 273/40, 391.5/40
    assert sim.local_steps.tolist() == [5, 9, 15, 10, 7, 10]
    # the epochs are the decimal the config wrote: 0.1 x 30 / 3 is 1 step (binary 0.1 gives 2)
    cfg = make_config(tiny_config(clients={"local_epochs": 0.1}))
    assert step_counts(cfg, torch.tensor([30, 7]), torch.tensor([3, 7])).tolist() == [1, 1]


def test_one_local_step_is_todays_gradient_bit_for_bit(tmp_path: Path):
    base = tiny_config(attack={"name": "label_flip", "f": 2}, aggregator={"name": "diversefl"},
                       rounds=10)  # fmt: skip
    plain, one = _sim(**base), _sim(**{**base, "clients": {**base["clients"], "local_steps": 1}})
    for r in (1, 2):
        byz = plain.byzantine_mask(r)
        a = plain.client_updates(r, byz, plain.context(r, byz))
        b = one.client_updates(r, byz, one.context(r, byz))
        assert torch.equal(a, b)
        assert torch.equal(plain.guiding(plain.theta), one.guiding(one.theta, r))
    # the pure function with one step returns the step-0 gradient itself
    g = torch.randn(4, 6)
    assert torch.equal(local_pseudo_gradients(torch.zeros(6), lambda *a: g, torch.ones(4), 0.3), g)
    ref = diversefl.run(base, out=tmp_path / "plain")
    keyed = {**base, "clients": {**base["clients"], "local_steps": 1},
             "optim": {**base["optim"], "server_momentum": 0.0}}  # fmt: skip
    run = diversefl.run(keyed, out=tmp_path / "keyed")
    assert _metrics(tmp_path / "keyed") == _metrics(tmp_path / "plain")
    assert torch.equal(run.theta, ref.theta)


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


@pytest.mark.parametrize("clients", [{"local_steps": 3}, {"local_epochs": 2.0, "batch": 40}])
def test_guide_runs_the_clients_local_steps_on_the_shared_sample(clients):
    """DiverseFL's guide with local training: the same local steps (the client's own count in
    the epoch form) of a plain SGD loop, every step on the client's whole shared sample."""
    sim = _sim(model={"name": "mlp"}, data=DIRICHLET, clients=clients)
    r = 2
    theta = sim.theta + 0.05 * torch.randn(sim.theta.shape, generator=generator(2, "t"))

    def sample(j: int, s: int):
        idx = sim.sample_idx[j][sim.sample_w[j] > 0]
        return sim.x_train[idx], sim.y_train[idx]

    want = _plain_local_sgd(sim, theta, sample, sim.local_steps, sim.schedule(r))
    torch.testing.assert_close(sim.guiding(theta, r), want, **TOL)
    sim.theta = theta
    ctx = sim.context(r, torch.zeros(sim.n, dtype=torch.bool))
    torch.testing.assert_close(ctx.guiding, want, **TOL)  # what DiverseFL reads


def test_fltrust_root_update_takes_the_local_steps():
    sim = _sim(model={"name": "mlp"}, clients={"local_steps": 3})
    idx = torch.arange(0, 40)
    lr = sim.schedule(4)
    module = _fresh_module(sim, sim.theta)
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(module(sim.x_train[idx]), sim.y_train[idx]).backward()
        opt.step()
    want = (sim.theta - parameters_to_vector(module.parameters()).detach()) / lr
    torch.testing.assert_close(sim.server_gradient(sim.theta, idx, 4), want, **TOL)


def test_label_flip_poisons_every_local_step():
    sim = _sim(model={"name": "mlp"}, clients={"local_steps": 3},
               attack={"name": "label_flip", "f": 2})  # fmt: skip
    r = 5
    byz = sim.byzantine_mask(r)
    got = sim.client_updates(r, byz, sim.context(r, byz))
    lr = sim.schedule(r)
    want = _plain_local_sgd(sim, sim.theta, _client_batch(sim, r, flip=byz), sim.local_steps, lr)
    torch.testing.assert_close(got, want, **TOL)
    first_only = _client_batch(sim, r, flip=byz)
    clean = _client_batch(sim, r)

    def poisoned_at_step_0(j, s):
        return first_only(j, s) if s == 0 else clean(j, s)

    partial = _plain_local_sgd(sim, sim.theta, poisoned_at_step_0, sim.local_steps, lr)
    gap = (got - partial).abs().amax(dim=1)
    assert bool((gap[byz] > 1e-3).all())  # the later steps were poisoned too
    assert float(gap[~byz].max()) < 1e-5  # honest clients are untouched


def test_skipped_byzantine_clients_stay_skipped_and_messages_act_on_deltas():
    sim = _sim(model={"name": "mlp"}, clients={"local_steps": 3},
               attack={"name": "same_value", "f": 2, "sigma": 3.0})  # fmt: skip
    r = 2
    byz = sim.byzantine_mask(r)
    sent = sim.client_updates(r, byz, sim.context(r, byz))
    assert torch.equal(sent[byz], torch.full_like(sent[byz], 3.0))
    want = _plain_local_sgd(sim, sim.theta, _client_batch(sim, r), sim.local_steps,
                            sim.schedule(r))  # fmt: skip
    torch.testing.assert_close(sent[~byz], want[~byz], **TOL)
    sim = _sim(model={"name": "mlp"}, clients={"local_steps": 3},
               attack={"name": "sign_flip", "f": 2})  # fmt: skip
    sent = sim.client_updates(r, byz, sim.context(r, byz))
    torch.testing.assert_close(sent[byz], -want[byz], **TOL)


def test_momentum_two_rounds_by_hand():
    """beta 0.5, lr 0.1, weight decay 0.1, theta_0 = (1, -2), aggregates g1 = (0.5, 1),
    g2 = (-1, 0.5): v1 = g1, theta_1 = theta_0 - 0.1 (v1 + 0.1 theta_0) = (0.94, -2.08);
    v2 = 0.5 v1 + g2 = (-0.75, 1), theta_2 = theta_1 - 0.1 (v2 + 0.1 theta_1)
    = (1.0056, -2.1592)."""
    momentum = ServerMomentum(0.5)
    theta = torch.tensor([1.0, -2.0], dtype=torch.float64)
    ctx = RoundContext(round=1, n=2, f=0, generator=generator(0, "r"))

    def mean(updates, ctx):
        return Aggregate(updates.mean(0), torch.ones(2, dtype=torch.bool))

    for g, want in (((0.5, 1.0), (0.94, -2.08)), ((-1.0, 0.5), (1.0056, -2.1592))):
        updates = torch.tensor([g, g], dtype=torch.float64)
        theta, _ = server_step(theta, mean, updates, ctx, 0.1, 0.1, momentum)
        torch.testing.assert_close(theta, torch.tensor(want, dtype=torch.float64))
    torch.testing.assert_close(momentum.velocity, torch.tensor([-0.75, 1.0], dtype=torch.float64))


def test_killed_and_resumed_momentum_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    cfg = tiny_config(rounds=20, clients={"local_steps": 3},
                      optim={"server_momentum": 0.9, "lr": 0.1},
                      attack={"name": "sign_flip", "f": 1}, aggregator={"name": "diversefl"},
                      eval={"every": 5, "checkpoint_every": 10})  # fmt: skip
    whole = diversefl.run(cfg, out=tmp_path / "whole")
    step = Simulation.step

    def crash_at_15(self, r):
        if r == 15:
            raise KeyboardInterrupt  # killed after the checkpoint of round 10
        return step(self, r)

    monkeypatch.setattr(Simulation, "step", crash_at_15)
    with pytest.raises(KeyboardInterrupt):
        diversefl.run(cfg, out=tmp_path / "killed")
    monkeypatch.setattr(Simulation, "step", step)
    from diversefl.results import load_checkpoint

    saved = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert saved["round"] == 10
    assert saved["simulation"]["server_momentum"]["velocity"].shape == whole.theta.shape
    resumed = diversefl.run(cfg, out=tmp_path / "killed", resume=True)
    assert _metrics(tmp_path / "killed") == _metrics(tmp_path / "whole")
    assert torch.equal(resumed.theta, whole.theta)


@pytest.mark.parametrize(
    "sections,match",
    [
        ({"clients": {"local_steps": 5, "local_epochs": 1.0}},
         r"local_epochs = 1.0 and local_steps = 5: set one of them"),
        ({"clients": {"local_steps": 0}}, r"clients.local_steps: .*equal to 1 \(got 0\)"),
        ({"clients": {"local_steps": 2.0}}, r"clients.local_steps: .*integer.*\(got 2.0\)"),
        ({"clients": {"local_epochs": 0.0}}, r"clients.local_epochs: .*greater than 0 \(got 0.0\)"),
        ({"clients": {"local_lr": -0.1}}, r"clients.local_lr: .*greater than 0 \(got -0.1\)"),
        ({"optim": {"server_momentum": 1.0}}, r"optim.server_momentum: .*less than 1 \(got 1.0\)"),
        ({"optim": {"server_momentum": -0.5}}, r"optim.server_momentum: .*equal to 0 \(got -0.5\)"),
    ],
)  # fmt: skip
def test_config_errors_name_the_bad_value(sections, match):
    with pytest.raises(ConfigError, match=match):
        make_config(tiny_config(**sections))


def test_refusals_before_the_first_round_name_the_setting():
    with pytest.raises(ValueError, match=r"clients.local_steps = 3: aggregator 'rsa' is a proto"):
        _sim(clients={"local_steps": 3}, aggregator={"name": "rsa"})
    with pytest.raises(ValueError, match=r"optim.server_momentum = 0.9: aggregator 'rsa'"):
        _sim(optim={"server_momentum": 0.9}, aggregator={"name": "rsa"})
    warm = {"schedule": "warmup_step", "warmup_rounds": 5, "warmup_start_lr": 0.0}
    with pytest.raises(ValueError, match=r"local step size of 0.0 .*set clients.local_lr"):
        _sim(clients={"local_steps": 2}, optim=warm)
    _sim(clients={"local_steps": 2, "local_lr": 0.1}, optim=warm)  # its own step size: fine
    sim = _sim(clients={"local_steps": 2})
    with pytest.raises(ValueError, match="guiding: with local training give the round"):
        sim.guiding(sim.theta)


@pytest.mark.slow  # 2 s or more on a 2-core CPU
def test_diversefl_run_with_five_local_steps_learns(tmp_path: Path):
    """`diversefl run` end to end on the tiny config: five local steps bring the test loss
    well below one step's in the same number of rounds, at an accuracy far above chance (0.1;
    on these class-sorted shards the clients' drift keeps it below one step's at round 10)."""
    raw = tiny_config(rounds=10, optim={"lr": 0.1}, eval={"every": 10})
    diversefl.run(raw, out=tmp_path / "one")
    one = _metrics(tmp_path / "one")[-1]
    path = tmp_path / "e5.toml"
    path.write_text(tomli_w.dumps({**raw, "clients": {**raw["clients"], "local_steps": 5}}))
    done = subprocess.run(
        [sys.executable, "-m", "diversefl.cli", "run", str(path), "--out", str(tmp_path / "e5"),
         "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    five = _metrics(tmp_path / "e5")[-1]
    assert float(five["test_loss"]) < 0.85 * float(one["test_loss"]), (one, five)
    assert float(five["test_accuracy"]) > 0.6, five
    assert "local_steps = 5" in (tmp_path / "e5" / "config.toml").read_text()


# -- Flower: a node runs the simulator's local steps for its own row ---------------------------
@pytest.mark.parametrize(
    "clients,attack",
    [
        ({}, {"name": "label_flip", "f": 2}),  # one step; unequal batches (a node's crash)
        ({"local_steps": 3}, {"name": "label_flip", "f": 2}),
        ({"local_epochs": 1.0, "batch": 40}, {"name": "sign_flip", "f": 2}),
    ],
)
def test_node_replays_its_local_steps_of_the_simulator(clients, attack):
    """Each node's update is its row of the simulator's, on Dirichlet shards with unequal
    batch sizes (a node whose batch is below the largest used to index past its shard)."""
    from diversefl.flower.common import Role, client_update, load_shard

    cfg = make_config(tiny_config(model={"name": "mlp"}, data=DIRICHLET, clients=clients,
                                  attack=attack, aggregator={"name": "diversefl"}))  # fmt: skip
    sim = Simulation(cfg)
    r = 3
    byz = sim.byzantine_mask(r)
    expected = sim.client_updates(r, byz, sim.context(r, byz))
    ranks = (torch.cumsum(byz.long(), 0) - 1).tolist()
    for j in range(sim.n):
        role = Role(attack["name"], {}, ranks[j], sim.f) if byz[j] else Role()
        got = client_update(cfg, load_shard(cfg, j, sim.n), sim.theta, r, role)
        torch.testing.assert_close(got, expected[j], **TOL)


def test_flower_run_with_three_local_steps_equals_the_simulator(tmp_path: Path):
    pytest.importorskip("flwr")
    from test_flower import _loopback_grid

    from diversefl.flower.strategy import DiverseFLStrategy

    raw = tiny_config(model={"name": "mlp"}, aggregator={"name": "diversefl"},
                      attack={"name": "sign_flip", "f": 2}, clients={"local_steps": 3},
                      optim={"lr": 0.2, "server_momentum": 0.5}, rounds=6,
                      eval={"every": 3})  # fmt: skip
    cfg = make_config(raw)
    grid = _loopback_grid([{"partition-id": j, "num-partitions": 6} for j in range(6)])
    strategy = DiverseFLStrategy(cfg, out=tmp_path / "flower")
    strategy.start(grid)
    ref = diversefl.run(cfg, out=tmp_path / "ref")
    flower, sim = _metrics(tmp_path / "flower"), _metrics(tmp_path / "ref")
    assert [r["round"] for r in flower] == [r["round"] for r in sim] == ["3", "6"]
    for a, b in zip(flower, sim, strict=True):
        assert (a["n_accepted"], a["tpr"], a["fpr"]) == (b["n_accepted"], b["tpr"], b["fpr"])
        assert math.isclose(float(a["test_loss"]), float(b["test_loss"]), rel_tol=1e-4)
        assert abs(float(a["test_accuracy"]) - float(b["test_accuracy"])) <= 0.005
    assert strategy.result is not None and strategy.result.theta is not None
    torch.testing.assert_close(strategy.result.theta, ref.theta, **TOL)
