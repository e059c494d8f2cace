"""Every config shipped with the package (paper presets, leaderboards, label-flip studies)
loads, and every cell of its sweep grid passes validation, so a typo cannot wait hours into a
sweep to surface."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import diversefl
from diversefl.config import load_config
from diversefl.experiments.sweep import load_sweep

CONFIGS = sorted((Path(diversefl.__file__).parent / "configs").rglob("*.toml"))


def test_configs_are_shipped():
    names = {p.relative_to(p.parents[1]).as_posix() for p in CONFIGS}
    assert {"paper/mnist-softmax.toml", "leaderboard/mnist-mlp-backdoor.toml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
@pytest.mark.slow  # 2 s or more on a 2-core CPU
def test_shipped_config_is_valid(path: Path):
    raw = tomllib.loads(path.read_text())
    if "sweep" not in raw:
        load_config(path)
        return
    cells = load_sweep(path)
    sweep = raw["sweep"]
    n_attacks = len(sweep.get("attacks", [None]))
    per_seed = sum(  # an aggregator entry may limit its attacks (`attacks = [...]`)
        len(a["attacks"]) if isinstance(a, dict) and "attacks" in a else n_attacks
        for a in sweep.get("aggregators", [None])
    )
    expected = len(sweep.get("seeds", [raw.get("seed", 0)])) * per_seed
    assert len(cells) == expected
    assert len({c.dirname for c in cells}) == len(cells)  # one run directory per cell


@pytest.mark.slow  # 2 s or more on a 2-core CPU
def test_backdoor_board_pairs_every_leaderboard_defense_with_the_backdoor():
    board = {c.aggregator for c in load_sweep(_config("leaderboard/mnist-mlp-backdoor.toml"))}
    grid = {c.aggregator for c in load_sweep(_config("leaderboard/mnist-mlp.toml"))}
    assert board == grid
    cell = load_sweep(_config("leaderboard/mnist-mlp-backdoor.toml"))[0]
    assert cell.config.data.partition == "two-class" and cell.attack == "backdoor"


def _config(name: str) -> Path:
    return next(p for p in CONFIGS if p.as_posix().endswith(name))


@pytest.mark.slow  # 2 s or more on a 2-core CPU
def test_mlp_leaderboards_run_oracle_under_one_attack_and_the_rest_under_all():
    for name in ("leaderboard/mnist-mlp.toml", "leaderboard/mnist-mlp-dirichlet.toml"):
        cells = load_sweep(_config(name))
        # 26 rules x 17 attacks x 3 seeds, and OracleSGD under no attack, sign flip and the two
        # trigger backdoors (their backdoor accuracy needs the triggered test pass)
        assert len(cells) == (26 * 17 + 4) * 3
        oracle = {c.attack for c in cells if c.aggregator == "oracle"}
        assert oracle == {"none", "sign_flip", "badnets", "dba"}
