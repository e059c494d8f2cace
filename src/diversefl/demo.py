"""The built-in demo: the paper's point in miniature on the bundled digits data (no download).
Sign-flipping clients wreck plain averaging; DiverseFL rejects them and keeps training."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diversefl.config import Config

DEMO_AGGREGATORS = ("mean", "diversefl")
WARM_UP_ROUNDS = 2  # rounds of each config run untimed before the timed runs

DEMO_CONFIG: dict[str, Any] = {
    "name": "demo",
    "seed": 0,
    "rounds": 300,
    "data": {"dataset": "digits", "partition": "sorted"},
    "model": {"name": "mlp"},
    "clients": {"n": 23, "batch": 0.5, "sample": 0.1},
    "optim": {"lr": 0.1, "schedule": "constant", "weight_decay": 0.0005},
    "attack": {"name": "sign_flip", "f": 5, "byzantine": "seeded"},
    "aggregator": {"name": "diversefl"},
    "eval": {"every": 10, "checkpoint_every": 100},
}


def demo_config(aggregator: str) -> dict[str, Any]:
    """The demo config with the given aggregator (a fresh copy)."""
    import copy

    cfg = copy.deepcopy(DEMO_CONFIG)
    cfg["aggregator"] = {"name": aggregator}
    cfg["name"] = f"demo-{aggregator}"
    return cfg


def demo_description(cfg: Config) -> str:
    """One line on what the demo trains, from its resolved config (so ``--set`` shows)."""
    data = "the bundled digits data" if cfg.data.dataset == "digits" else f"{cfg.data.dataset}"
    split = {
        "sorted": "sorted, non-IID shards",
        "iid": "IID shards",
        "dirichlet": f"Dirichlet({cfg.data.alpha:g}) shards",
        "two-class": "at least two classes per client",
    }[cfg.data.partition]
    attack = (
        "flipping the sign of their gradients"
        if cfg.attack.name == "sign_flip"
        else f"running the {cfg.attack.name} attack"
    )
    if cfg.attack.name == "none" or cfg.attack.f == 0:
        return f"{cfg.clients.n} clients on {data} ({split}), none of them attacking"
    who = f"{cfg.attack.f} of them Byzantine and {attack}"
    return f"{cfg.clients.n} clients on {data} ({split}), {who}"


def warm_up(cfgs: Iterable[Config], data_dir: str | Path | None = None) -> None:
    """Run each config for :data:`WARM_UP_ROUNDS` rounds, untimed and writing nothing, so that
    a process's one-off costs (torch's first calls, each rule's first pass, the data loaded
    once) are not charged to the first timed run: the demo's seconds then compare the rules."""
    from diversefl.api import run

    for cfg in cfgs:
        short = cfg.model_copy(update={"rounds": min(WARM_UP_ROUNDS, cfg.rounds)})
        run(short, data_dir=data_dir, out=False, progress=False)
