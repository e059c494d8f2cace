"""RSA against a plain per-client loop of the paper's eqs. 13-14."""

from __future__ import annotations

import torch
from conftest import tiny_config

import diversefl
from diversefl.config import make_config
from diversefl.engine.gradients import loop_grads
from diversefl.engine.simulator import Simulation
from diversefl.protocols.rsa import rsa_server_step


def _sign(v: float) -> float:
    return (v > 0) - (v < 0)


def test_rsa_two_rounds_match_plain_loop():
    cfg = make_config(
        tiny_config(
            model={"name": "softmax"},
            aggregator={"name": "rsa", "delta": 0.1},
            attack={"name": "sign_flip", "f": 1, "byzantine": [2]},
            optim={"lr": 0.5, "schedule": "constant", "weight_decay": 0.01},
        )
    )
    sim = Simulation(cfg)
    n, d = sim.n, sim.fm.dim
    theta_m = sim.theta.clone()
    clients = theta_m[None].repeat(n, 1)
    uploads = clients.clone()
    for r in (1, 2):
        idx, w = sim.draw_batches(r)
        grads = loop_grads(sim.fm, clients, sim.x_train[idx], sim.y_train[idx], w)
        new_clients = clients.clone()
        for j in range(n):
            for u in range(d):
                new_clients[j, u] = clients[j, u] - 0.5 * (
                    grads[j, u] / n + 0.1 * _sign(float(clients[j, u] - theta_m[u]))
                )
        new_m = theta_m.clone()
        for u in range(d):  # eq. 14 by hand, every coordinate
            pull = sum(_sign(float(theta_m[u] - uploads[j, u])) for j in range(n))
            new_m[u] = theta_m[u] - 0.5 * (0.01 * theta_m[u] + 0.1 * pull)
        torch.testing.assert_close(rsa_server_step(theta_m, uploads, 0.5, 0.1, 0.01), new_m)
        theta_m, clients = new_m, new_clients
        uploads = clients.clone()
        uploads[2] = -clients[2]  # the sign-flip client uploads its negated copy
        sim.step(r)
        torch.testing.assert_close(sim.theta, theta_m, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(sim.protocol_state["clients"], clients, atol=1e-5, rtol=1e-4)


def test_rsa_resists_gaussian_where_mean_fails():
    attack = {"name": "gaussian", "f": 1, "sigma": 1e4}
    rsa = diversefl.run(
        tiny_config(rounds=60, aggregator={"name": "rsa", "delta": 0.05}, attack=attack),
        out=False,
    )
    mean = diversefl.run(tiny_config(rounds=60, attack=attack), out=False)
    assert rsa.summary["final_test_accuracy"] > mean.summary["final_test_accuracy"] + 0.2
