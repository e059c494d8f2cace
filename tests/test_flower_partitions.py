"""Partition claims on the Flower server (security issue #30, item 3): a node that claims a
partition before its owner connects must not keep it silently, the run waits for every
partition to be claimed (not for any n nodes), and with node authentication the operator's
node -> partition binding is required and enforced. In-process, through the loopback grid of
test_flower.py, with nodes that connect late."""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_config

from diversefl.config import make_config
from diversefl.flower import FLOWER_AVAILABLE

pytestmark = pytest.mark.skipif(
    not FLOWER_AVAILABLE, reason='flwr is not installed: pip install -e ".[flower]"'
)

if FLOWER_AVAILABLE:
    from test_flower import _loopback_grid

    from diversefl.flower.common import CONFIG, RunSettings
    from diversefl.flower.replies import SharedSample
    from diversefl.flower.samples import Roster
    from diversefl.flower.strategy import DiverseFLStrategy

N = 5
ROGUE = 5  # index of the extra node: it claims partition 1 with partition 1's exact sample


def _node(i: int) -> int:
    """The loopback grid's node id for node config i."""
    return 7000 + 13 * i


def _grid_with_rogue(hidden: int, visible: Callable[[], bool]) -> Any:
    """Nodes 0..4 hold partitions 0..4, node 5 claims partition 1 too; node ``hidden`` is
    connected (listed by the grid) only once ``visible()`` is true."""
    configs = [{"partition-id": j, "num-partitions": N} for j in range(N)]
    configs.append({"partition-id": 1, "num-partitions": N})
    grid = _loopback_grid(configs)
    every = grid.get_node_ids
    grid.get_node_ids = lambda: [k for k in every() if k != _node(hidden) or visible()]
    return grid


def _warnings(caplog: pytest.LogCaptureFixture, *needles: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and all(s in r.getMessage() for s in needles)
    ]


def _decisions(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_a_late_owner_and_the_node_that_took_its_partition_are_both_excluded(tmp_path, caplog):
    """The rogue claims partition 1 before its owner connects, so it holds it in round 1;
    when the owner connects (round 2) its claim is a second one: both are excluded from then
    on, loudly (one WARNING each) and in summary.json. Before the fix the owner was never
    asked for its sample: shut out silently, the rogue kept partition 1 to the end."""
    cfg = make_config(tiny_config(clients={"n": N}, rounds=3, eval={"every": 1}))
    trained: list[int] = []  # rounds whose train messages went out
    grid = _grid_with_rogue(hidden=1, visible=lambda: bool(trained))
    push = grid.push_messages

    def recording_push(messages: Any) -> Any:
        messages = list(messages)
        trained.extend(
            int(m.content[CONFIG]["server-round"])
            for m in messages
            if m.metadata.message_type == "train"
        )
        return push(messages)

    grid.push_messages = recording_push
    strategy = DiverseFLStrategy(cfg, out=tmp_path / "run", timeout=5.0, min_nodes=3)
    caplog.set_level(logging.INFO, logger="flwr")
    strategy.start(grid)
    owner, rogue = _node(1), _node(ROGUE)
    fl = strategy.result.summary["flower"]
    assert fl["claim_conflicts"] == {"1": [rogue, owner]}
    assert fl["node_ids"][1] == "" and list(fl["excluded"]) == ["1"]
    claim = f"partition 1 is claimed by nodes {owner}, {rogue}"
    assert claim in fl["excluded"]["1"]
    for node in (owner, rogue):
        assert len(_warnings(caplog, f"excluding node {node} (partition 1)", claim)) == 1
        assert fl["sample_rejects"][str(node)] == claim
    rows = _decisions(tmp_path / "run" / "decisions.csv")
    assert [r["accepted"] for r in rows if r["client"] == "1"] == ["1", "0", "0"]
    assert [strategy.round_metrics[r]["excluded"] for r in (1, 2, 3)] == [0, 1, 1]
    assert strategy.federation.pool.sizes[1] == 0  # its sample no longer guides anything


def test_the_run_waits_for_every_partition_to_be_claimed_not_for_n_nodes(caplog):
    """Five nodes are connected at first (owners of 0..3 and a rogue claiming 1): n of them,
    but partition 4's owner is not among them. The sample stage waits until partition 4 is
    claimed too (its owner connects a second later), and the double claim on partition 1
    excludes both claimants. Before the fix the run started with the first n nodes and
    partition 4's owner was never asked."""
    cfg = make_config(tiny_config(clients={"n": N}, rounds=1, eval={"every": 1}))
    t0: list[float] = []

    def late() -> bool:
        t0.append(time.monotonic())
        return t0[-1] - t0[0] > 1.0

    strategy = DiverseFLStrategy(cfg, timeout=30.0, min_nodes=3)
    caplog.set_level(logging.INFO, logger="flwr")
    started = time.monotonic()
    strategy.start(_grid_with_rogue(hidden=4, visible=late))
    assert time.monotonic() - started < 20  # it did not wait out the 30 s timeout
    fl = strategy.result.summary["flower"]
    assert fl["node_ids"][4] == str(_node(4))
    assert list(fl["excluded"]) == ["1"]
    assert {j: sorted(v) for j, v in fl["claim_conflicts"].items()} == {
        "1": [_node(1), _node(ROGUE)]
    }
    assert not _warnings(caplog, "partitions claimed within")


def test_node_auth_needs_the_binding_and_it_is_enforced(caplog):
    """node-auth = true: without node-partitions the run refuses to start; with it, an
    unbound node that connects first and claims partition 1 is refused, and the bound owner
    (connecting a second later) holds partition 1: the stage waits for the bound nodes."""
    from diversefl.flower.server_app import strategy_from_settings

    cfg = make_config(tiny_config(clients={"n": N}, rounds=1, eval={"every": 1}))
    with pytest.raises(ValueError, match="node-auth = true needs node-partitions"):
        DiverseFLStrategy(cfg, node_auth=True)
    settings = RunSettings.from_run_config({"node-auth": True, "overrides": "clients.n=6"})
    assert settings.node_auth is True
    with pytest.raises(ValueError, match="node-auth = true needs node-partitions"):
        strategy_from_settings(settings)
    with pytest.raises(ValueError, match="run config node-auth='yes': expected true or false"):
        RunSettings.from_run_config({"node-auth": "yes"})
    t0: list[float] = []

    def late() -> bool:
        t0.append(time.monotonic())
        return t0[-1] - t0[0] > 1.0

    binding = {_node(j): j for j in range(N)}
    strategy = DiverseFLStrategy(
        cfg, timeout=30.0, min_nodes=3, node_partitions=binding, node_auth=True
    )
    caplog.set_level(logging.INFO, logger="flwr")
    strategy.start(_grid_with_rogue(hidden=1, visible=late))
    fl = strategy.result.summary["flower"]
    assert fl["node_ids"] == [str(_node(j)) for j in range(N)]
    assert fl["excluded"] == {} and fl["claim_conflicts"] == {}
    rogue = _node(ROGUE)
    assert fl["sample_rejects"] == {str(rogue): f"node {rogue} is not in node-partitions"}
    assert len(_warnings(caplog, f"excluding node {rogue}")) == 1


def _sample(node: int, j: int) -> SharedSample:
    return SharedSample(
        node_id=node, partition_id=j, indices=torch.arange(2), x=torch.zeros(2, 1, 8, 8),
        y=torch.zeros(2, dtype=torch.long), shard_len=10, batch_size=5, attack="none",
    )  # fmt: skip


def test_roster_keeps_a_partition_only_while_it_has_one_claimant():
    roster = Roster(3)
    assert roster.claim(_sample(10, 0)) == [] and roster.claim(_sample(11, 1)) == []
    assert not roster.settled({0, 1, 2}) and roster.settled({0, 1})
    assert roster.claim(_sample(12, 1)) == [11, 12]  # a second claim: both out
    assert roster.claim(_sample(13, 1)) == [11, 12, 13]  # and every later one
    assert roster.node_ids() == [10, None, None]
    assert roster.settled({0, 1}) and not roster.settled({0, 1, 2})
    assert roster.excluded() == {
        1: "no node sent a sample for it",
        2: "no node sent a sample for it",
    }
