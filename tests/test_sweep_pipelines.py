"""Pipelines (pre-aggregators before a rule) as grid entries, and the rule that the optimised
ALIE / IPM search against: set per cell (and per run) to the run's own aggregator unless given."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w
import torch
from conftest import tiny_config

from diversefl import attacks
from diversefl.aggregators import Krum, Mean, RoundContext
from diversefl.aggregators.pipeline import Pipeline
from diversefl.aggregators.pre import NNM, Bucketing
from diversefl.api import resolve_config
from diversefl.api import run as run_api
from diversefl.attacks.rule_search import check_rule_name
from diversefl.cli import main
from diversefl.config import ConfigError, make_config, to_toml_dict
from diversefl.experiments.sweep import expand
from diversefl.methods import build_method


def _grid(**sweep) -> dict:
    raw = tiny_config(rounds=5, attack={"name": "none", "f": 1})
    raw["sweep"] = sweep
    return raw


def test_pre_entries_and_pipeline_names_expand_to_pipelines_labelled_by_their_name():
    cells = expand(
        _grid(
            aggregators=[
                "mean",
                "nnm+trimmed_mean",
                {"name": "median", "pre": ["nnm", {"name": "clipping", "bound": 2.0}]},
                {"name": "krum", "pre": ["bucketing"], "label": "bk"},  # a given label wins
            ],
            attacks=["none"],
        )
    )
    assert [c.aggregator for c in cells] == [
        "mean",
        "nnm+trimmed_mean",
        "nnm+clipping+median",
        "bk",
    ]
    assert [c.config.aggregator.pre for c in cells] == [
        None,
        ["nnm"],
        ["nnm", {"name": "clipping", "bound": 2.0}],
        ["bucketing"],
    ]
    for c in cells[:3]:  # the default label is the name the built pipeline gives itself
        agg = c.config.aggregator
        assert build_method(agg.name, agg.params(), agg.pre).name == c.aggregator
    assert cells[2].dirname == "nnm+clipping+median__none__seed0"


def test_a_pipeline_string_is_the_same_cell_as_a_table_with_pre():
    text = expand(_grid(aggregators=["nnm+krum"], attacks=["sign_flip"]))
    table = expand(_grid(aggregators=[{"name": "krum", "pre": ["nnm"]}], attacks=["sign_flip"]))
    assert [c.dirname for c in text] == [c.dirname for c in table] == ["nnm+krum__sign_flip__seed0"]
    assert to_toml_dict(text[0].config) == to_toml_dict(table[0].config)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("nnm+xyz+krum", r"'xyz' is not a pre-aggregator .*known pre-aggregators: arc, "
         r"bucketing, clipping, nnm"),
        ("krum+nnm", r"'krum' is not a pre-aggregator"),
        ("nnm++krum", r"'nnm\+\+krum' has an empty part"),
        ({"name": "nnm+krum", "pre": ["arc"]}, r"also sets 'pre' = \['arc'\]; give them in one"),
        ("nnm+nope", r"(?s)sweep cell nnm\+nope__none__seed0: .*unknown aggregator 'nope'"),
    ],
)  # fmt: skip
def test_an_unknown_part_of_a_pipeline_entry_is_an_error_naming_it(entry, message):
    with pytest.raises(ConfigError, match=message):
        expand(_grid(aggregators=[entry], attacks=["none"]))


def test_the_base_configs_pre_applies_to_the_base_entry_only():
    raw = _grid(attacks=["none"])
    raw["aggregator"] = {"name": "krum", "pre": ["nnm"]}
    (cell,) = expand(raw)  # no aggregators listed: the base table is the one entry
    assert cell.aggregator == "nnm+krum" and cell.config.aggregator.pre == ["nnm"]
    raw["sweep"]["aggregators"] = ["mean", "median"]
    assert all(c.config.aggregator.pre is None for c in expand(raw))


def test_searched_rule_is_each_cells_aggregator_unless_the_entry_sets_it():
    cells = expand(
        _grid(
            aggregators=["median", "nnm+krum", {"label": "cc", "name": "centered_clipping"}],
            attacks=["alie_opt", {"label": "ipm-mean", "name": "ipm_opt", "rule": "mean"}],
        )
    )
    rules = {c.dirname: c.config.attack.params()["rule"] for c in cells}
    assert rules == {
        "median__alie_opt__seed0": "median",
        "nnm+krum__alie_opt__seed0": "nnm+krum",
        "cc__alie_opt__seed0": "centered_clipping",  # the rule's name, not the grid label
        "median__ipm-mean__seed0": "mean",
        "nnm+krum__ipm-mean__seed0": "mean",
        "cc__ipm-mean__seed0": "mean",
    }
    # config.toml records it (an explicit setting, as written)
    pipeline_cell = next(c for c in cells if c.dirname == "nnm+krum__alie_opt__seed0")
    assert to_toml_dict(pipeline_cell.config)["attack"]["rule"] == "nnm+krum"


def test_a_runs_unset_rule_is_its_aggregator_written_to_config_toml(tmp_path: Path):
    raw = tiny_config(rounds=3, attack={"name": "alie_opt", "f": 1},
                      aggregator={"name": "median", "pre": ["nnm"]})  # fmt: skip
    cfg = make_config(raw)
    assert cfg.attack.params()["rule"] == "nnm+median"
    run_api(cfg, out=tmp_path / "run", progress=False)
    assert 'rule = "nnm+median"' in (tmp_path / "run" / "config.toml").read_text()
    # the default follows an override of the aggregator; a rule that was given stays
    assert resolve_config(cfg, ["aggregator.name=mean"]).attack.params()["rule"] == "nnm+mean"
    given = make_config({**raw, "attack": {**raw["attack"], "rule": "krum"}})
    assert resolve_config(given, ["aggregator.name=mean"]).attack.params()["rule"] == "krum"
    # with no attack that searches, nothing is added
    assert make_config(tiny_config(attack={"name": "alie", "f": 1})).attack.params() == {}


def test_a_protocol_is_no_rule_to_search_against():
    raw = tiny_config(attack={"name": "ipm_opt", "f": 1}, aggregator={"name": "rsa"})
    with pytest.raises(ConfigError, match=r"attack.rule: ipm_opt .* 'rsa' is not one .*set attack"):
        make_config(raw)
    make_config({**raw, "attack": {**raw["attack"], "rule": "median"}})  # given: fine


def test_rule_names_of_pipelines_are_checked():
    check_rule_name("alie_opt", "nnm+bucketing+krum")
    with pytest.raises(ValueError, match="unknown rule 'nope'"):
        check_rule_name("alie_opt", "nnm+nope")
    with pytest.raises(ValueError, match=r"alie_opt.rule: 'xyz\+krum': 'xyz' is not a pre-agg"):
        check_rule_name("alie_opt", "xyz+krum")
    with pytest.raises(ValueError, match="bucketing turns clients into groups"):
        check_rule_name("alie_opt", "bucketing+diversefl")


def _gap(rule, rows: torch.Tensor, ctx: RoundContext, mean: torch.Tensor) -> float:
    return float((rule(rows, ctx).update.double() - mean).norm())


def test_alie_opt_against_a_pipeline_matches_a_plain_search_with_the_pipeline():
    n, f, d = 11, 3, 6
    gen = torch.Generator().manual_seed(4)
    honest = torch.randn(n - f, d, generator=gen, dtype=torch.float64)
    ctx = RoundContext(round=1, n=n, f=f, generator=torch.Generator().manual_seed(0))
    sent = attacks.get("alie_opt", rule="nnm+krum", steps=11)(
        honest, torch.zeros(f, d, dtype=torch.float64), ctx
    )
    mu, sigma = honest.mean(0), honest.std(0, correction=0)
    from diversefl.attacks.alie import alie_z_max

    candidates = sorted({*(5.0 * i / 10 for i in range(11)), alie_z_max(n, f)})
    gaps = [
        _gap(
            Pipeline([NNM()], Krum()), torch.cat([honest, (mu - z * sigma).expand(f, -1)]), ctx, mu
        )
        for z in candidates
    ]
    best = candidates[gaps.index(max(gaps))]
    torch.testing.assert_close(sent[0], mu - best * sigma)
    assert best != candidates[0]  # the search chose something: the check is not vacuous


def test_a_random_rule_is_judged_on_copies_of_the_rounds_generator():
    """Every candidate sees the same bucketing draws, and the server's own draws this round
    (from the same generator, after the attack) are left as they were."""
    n, f, d = 8, 2, 5
    gen = torch.Generator().manual_seed(5)
    honest = torch.randn(n - f, d, generator=gen, dtype=torch.float64)
    ctx = RoundContext(round=1, n=n, f=f, generator=torch.Generator().manual_seed(1))
    state = ctx.generator.get_state()
    sent = attacks.get("ipm_opt", rule="bucketing+mean", steps=5)(
        honest, torch.zeros(f, d, dtype=torch.float64), ctx
    )
    assert torch.equal(ctx.generator.get_state(), state)
    mean = honest.mean(0)
    candidates = sorted({*(0.01 * 10**i for i in range(5)), 0.1})
    gaps = []
    for eps in candidates:  # a plain search: each candidate from the round's generator state
        judged = RoundContext(round=1, n=n, f=f, generator=torch.Generator())
        judged.generator.set_state(state)
        rows = torch.cat([honest, (-eps * mean).expand(f, -1)])
        gaps.append(_gap(Pipeline([Bucketing()], Mean()), rows, judged, mean))
    torch.testing.assert_close(sent[0], -candidates[gaps.index(max(gaps))] * mean)


def test_plot_table_shows_pipeline_rows_by_their_label(tmp_path: Path, capsys):
    raw = _grid(aggregators=["mean", "nnm+krum"], attacks=["sign_flip"])
    path = tmp_path / "grid.toml"
    path.write_text(tomli_w.dumps(raw))
    assert main(["sweep", str(path), "--out", str(tmp_path / "g"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "g"), "--table"]) == 0
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and "Aggregator" not in line]  # fmt: skip
    assert "nnm+krum" in rows
