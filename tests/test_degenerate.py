"""Degenerate federations: what works gives documented numbers, what cannot work is refused
before training with an error that names the requirement."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

import diversefl
from diversefl.config import ConfigError, make_config
from diversefl.engine.simulator import Simulation


@pytest.mark.parametrize("name", ["mean", "median", "diversefl", "trimmed_mean", "geomed"])
def test_a_single_client_runs(name):
    cfg = tiny_config(rounds=3, clients={"n": 1, "batch": 0.5, "sample": 0.5})
    cfg["aggregator"] = {"name": name}
    cfg["attack"] = {"name": "none", "f": 0}  # one client cannot assume an attacker
    r = diversefl.run(cfg, out=False)
    assert torch.isfinite(r.theta).all() and r.summary["rounds"] == 3


@pytest.mark.parametrize(
    ("name", "f", "needle"),
    [
        ("krum", 3, "krum: needs n > 2f + 2"),
        ("multi_krum", 2, "n > 2f + 2"),
        ("bulyan", 1, "n >= 4f + 3"),
        ("krum", 0, "n > 2f + 2"),  # n = 1: even without attackers
    ],
)
def test_methods_that_cannot_work_fail_at_config_time(name, f, needle):
    n = 1 if f == 0 else 6
    cfg = tiny_config(
        clients={"n": n, "batch": 0.5, "sample": 4},
        attack={"name": "sign_flip" if f else "none", "f": f},
        aggregator={"name": name},
    )
    with pytest.raises(ConfigError, match=needle.replace("+", r"\+")):
        make_config(cfg)


def test_f_at_least_n_is_refused_and_half_is_allowed_for_diversefl():
    with pytest.raises(ConfigError, match="f=6 must be smaller than clients.n=6"):
        make_config(tiny_config(attack={"name": "sign_flip", "f": 6}))
    # DiverseFL tests each client on its own, so a Byzantine majority is still caught
    r = diversefl.run(
        tiny_config(
            rounds=6, attack={"name": "sign_flip", "f": 4}, aggregator={"name": "diversefl"}
        ),
        out=False,
    )
    assert r.summary["mean_tpr"] == 1.0


def test_every_client_rejected_applies_only_the_decay():
    cfg = tiny_config(
        rounds=1,
        optim={"lr": 0.5, "schedule": "constant", "weight_decay": 0.1},
        model={"name": "mlp"},
        aggregator={"name": "diversefl", "eps1": 1e6, "eps2": 2e6},  # nobody passes C2
    )
    sim = Simulation(make_config(cfg))
    before = sim.theta.clone()
    rec = sim.step(1)
    assert not rec.accepted.any()
    torch.testing.assert_close(sim.theta, before * (1 - 0.5 * 0.1))


def test_sample_and_batch_larger_than_the_shard_are_capped_with_a_warning():
    cfg = tiny_config(clients={"n": 6, "batch": 10_000, "sample": 5_000})
    with pytest.warns(UserWarning, match="clients.sample=5000 is larger than the shards"):
        sim = Simulation(make_config(cfg))
    assert torch.equal(sim.sample_k, sim.shard_len) and torch.equal(sim.batch_k, sim.shard_len)
    for j in range(6):  # the server then holds the client's whole shard
        got = set(sim.sample_idx[j, : int(sim.sample_k[j])].tolist())
        assert got == set(sim.shards[j, : int(sim.shard_len[j])].tolist())


def test_more_clients_than_examples_is_a_clear_error():
    with pytest.raises(ValueError, match="clients.n = 2000 is invalid: allowed 1..1437"):
        Simulation(make_config(tiny_config(clients={"n": 2000, "batch": 1, "sample": 1})))
