"""Seeding: keys give stable seeds, and the per-round dropout seeding on CPU leaves torch's
generator exactly where ``torch.manual_seed`` would (so runs reproduce as before)."""

from __future__ import annotations

import torch
from torch import nn

from diversefl.engine.seeding import seed_dropout, seed_for


def test_seed_for_is_stable_and_key_sensitive() -> None:
    assert seed_for(0, "dropout", 3) == seed_for(0, "dropout", 3)
    seeds = {seed_for(0, "dropout", 3), seed_for(1, "dropout", 3), seed_for(0, "dropout", 4)}
    assert len(seeds) == 3
    assert all(0 <= s < 2**63 for s in seeds)


def test_seed_dropout_matches_torch_manual_seed_on_cpu() -> None:
    """Same random numbers and the same dropout masks after either call, for several seeds."""
    drop = nn.Dropout(0.5).train()
    x = torch.ones(4, 64)
    for seed in (0, 1, seed_for(7, "dropout", 12), 2**63 - 1):
        torch.manual_seed(seed)
        want = (torch.rand(100), drop(x), torch.randn(5))
        torch.manual_seed(seed + 1)  # move the generator elsewhere first
        seed_dropout(seed, "cpu")
        got = (torch.rand(100), drop(x), torch.randn(5))
        for a, b in zip(want, got, strict=True):
            assert torch.equal(a, b)


def test_seed_dropout_accepts_a_device_object() -> None:
    seed_dropout(5, torch.device("cpu"))
    a = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(a, torch.rand(3))
