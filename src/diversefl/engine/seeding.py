"""Every random draw comes from a generator derived from (seed, purpose, round, ...), so a run
is a pure function of its config: resuming and re-running give the same numbers, and a real
client can reproduce its own draws from the same keys."""

from __future__ import annotations

import zlib

import numpy as np
import torch


def seed_for(seed: int, *keys: int | str) -> int:
    """A 63-bit seed derived from the run seed and the keys (stable across processes)."""
    words = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF]
    for k in keys:
        words.append(zlib.crc32(k.encode()) if isinstance(k, str) else int(k) & 0xFFFFFFFF)
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def generator(seed: int, *keys: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded from :func:`seed_for`."""
    g = torch.Generator(device=device)
    g.manual_seed(seed_for(seed, *keys))
    return g


def seed_dropout(seed: int, device: str | torch.device = "cpu") -> None:
    """Seed torch's global generator, which dropout draws from, for one round.

    On CPU this seeds only the CPU generator: ``torch.manual_seed`` also queues the seed for
    every accelerator backend, recording a stack trace for each (~0.2 ms a call, once per round
    and per client), and leaves the CPU generator in exactly the same state. On any other
    device it is ``torch.manual_seed``, which seeds that device's generator too.
    """
    if torch.device(device).type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)
