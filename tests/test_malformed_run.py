"""Malformed updates inside a running federation: the bad rows are rejected and counted, the
round goes on, and the model stays finite, for every aggregator."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from conftest import tiny_config

from diversefl import aggregators
from diversefl.attacks.base import Attack
from diversefl.config import make_config
from diversefl.engine.runner import train
from diversefl.engine.simulator import Simulation

BAD_VALUES = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "huge": 1e38}


@dataclass
class Garbage(Attack):
    """Each Byzantine client sends its gradient with one kind of malformed entries."""

    kinds: tuple[str, ...] = ("nan", "inf")

    def __call__(self, honest, byzantine, ctx):
        out = byzantine.clone()
        for i in range(out.shape[0]):
            kind = self.kinds[i % len(self.kinds)]
            out[i, :: 1 + i] = BAD_VALUES[kind]
        return out


@pytest.mark.parametrize("name", sorted(aggregators.REGISTRY))
def test_malformed_rows_are_rejected_and_counted_every_round(name):
    params = {"sigma": 0.0} if name == "noisy_median" else {}
    cfg = make_config(
        tiny_config(
            rounds=4,
            clients={"n": 11, "batch": 0.5, "sample": 6},
            attack={"name": "sign_flip", "byzantine": [1, 4]},
            aggregator={"name": name, **params},
        )
    )
    sim = Simulation(cfg)
    sim.attack = Garbage(kinds=("nan", "huge"))
    result = train(cfg, progress=False, sim=sim)
    assert torch.isfinite(sim.theta).all()
    for row in result.metrics:
        assert float(row["tpr"]) == 1.0  # both malformed rows rejected in every round
        assert float(row["n_accepted"]) <= 9
    assert result.summary["mean_tpr"] == 1.0
