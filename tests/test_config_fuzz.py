"""Fuzzing config overrides (hypothesis, derandomized): valid keys with wrong-typed values,
unknown keys, table values, text after a value, newlines and garbage, through the config
loader and through `diversefl run`. Each must give a valid config (a run) or a ConfigError
(exit 2 with an `error:` line and nothing written), never a traceback, and a valid one must
change only the settings it names."""

from __future__ import annotations

import json
import tomllib
import warnings
from pathlib import Path
from typing import Any

import tomli_w
from conftest import tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from diversefl.cli import main
from diversefl.config import (
    Config,
    ConfigError,
    apply_overrides,
    load_config,
    make_config,
    parse_value,
    to_toml_dict,
)
from diversefl.demo import demo_config

KEYS = [
    "rounds", "seed", "name", "clients.n", "clients.batch", "clients.sample", "clients.loss",
    "optim.lr", "optim.schedule", "optim.weight_decay", "optim.milestones", "optim.gamma",
    "attack.f", "attack.byzantine", "eval.every", "eval.decisions", "eval.checkpoint_every",
    "eval.batch", "engine.device", "engine.grads", "engine.clients_per_chunk", "data.partition",
]  # fmt: skip
SECTIONS = ["clients", "optim", "attack", "eval", "engine", "data"]
UNKNOWN = ["clients.m", "bogus", "eval.every.x", "rounds.x", "optim.lr.x", "data", "Clients.n"]
TABLE_KEYS = ["n", "batch", "sample", "f", "every", "lr", "decisions", "device", "bogus"]

SCALARS = st.one_of(
    st.integers(-3, 40).map(str),
    st.sampled_from(["0.5", "1e-3", "1.0", "2.5", "1e300", "-0.1", "inf", "nan", "1_000"]),
    st.sampled_from(["true", "false", '"3"', '"0.5"', '"yes"', '"true"', "'1'", '""']),
    st.sampled_from(["mnist", "iid", "sum", "cuda", "mps", "meta", "cpu", "vmap", "x y"]),
    st.sampled_from(["[1, 2]", "[]", '["a"]', "[0, 30]", "2024-05-01", "07:32:00"]),
)
TABLES = st.dictionaries(st.sampled_from(TABLE_KEYS), SCALARS, max_size=3).map(
    lambda d: "{" + ", ".join(f"{k} = {v}" for k, v in d.items()) + "}"
)
TRAILERS = st.sampled_from([" # x", '\n[attack]\nname = "gaussian"', " 4", ", 5", "\nseed = 1"])
VALUES = st.one_of(
    SCALARS,
    TABLES,
    st.tuples(SCALARS, TRAILERS).map("".join),
    st.text(max_size=10),
)
# well-typed values, so that valid configs are common enough to test what they change
GOOD = {
    "seed": st.integers(0, 9).map(str),
    "name": st.sampled_from(["a", "run-1.5", "c11+2", '"q"']),
    "clients.n": st.integers(4, 12).map(str),
    "clients.batch": st.sampled_from(["0.5", "0.25", "4", "1"]),
    "clients.sample": st.sampled_from(["0.1", "3", "8"]),
    "clients.loss": st.sampled_from(["mean", "sum"]),
    "optim.lr": st.sampled_from(["0.1", "1", "0.05"]),
    "optim.schedule": st.sampled_from(["constant", "inv_sqrt", '"step"']),
    "optim.milestones": st.sampled_from(["[1]", "[]", "[2, 5]"]),
    "eval.every": st.integers(1, 3).map(str),
    "eval.decisions": st.sampled_from(["true", "false"]),
    "engine.grads": st.sampled_from(["auto", "vmap", "dense"]),
    "attack.f": st.integers(0, 2).map(str),
    "data.partition": st.sampled_from(["iid", "sorted"]),
}
GOOD_ITEMS = st.sampled_from(sorted(GOOD)).flatmap(
    lambda key: GOOD[key].map(lambda value: f"{key}={value}")
)
GOOD_TABLES = st.sampled_from(
    ["clients={n = 5}", "clients={batch = 0.25, sample = 4}", "eval={every = 1}", "optim={}"]
)
OVERRIDES = st.one_of(
    GOOD_ITEMS,
    GOOD_TABLES,
    st.tuples(st.sampled_from(KEYS), VALUES).map("=".join),
    st.tuples(st.sampled_from(SECTIONS), TABLES).map("=".join),
    st.tuples(st.sampled_from(UNKNOWN), SCALARS).map("=".join),
    st.tuples(st.text(max_size=8), VALUES).map("=".join),
    st.text(max_size=16),
)


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as {dotted key: value}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_leaves(value, name + "."))
        else:
            out[name] = value
    return out


def _set_by(items: list[str]) -> dict[str, Any]:
    """What the overrides set, as {dotted key: value}, built without apply_overrides: a table
    value sets its own keys (leaves), a later item wins."""
    out: dict[str, Any] = {}
    for item in items:
        key, _, text = item.partition("=")
        key = ".".join(p.strip() for p in key.split("."))
        value = parse_value(text.strip())
        if not isinstance(value, dict):
            out = {k: v for k, v in out.items() if not k.startswith(key + ".")}
        out.update(_leaves(value, key + ".") if isinstance(value, dict) else {key: value})
    return out


def _same(saved: Any, given: Any) -> bool:
    """``saved`` is the value given, not a coerced one ("3" is not 3, 1 is not true); an int
    given for a float setting is saved as that float."""
    if isinstance(given, list):
        same_length = isinstance(saved, list) and len(saved) == len(given)
        return same_length and all(map(_same, saved, given))
    if type(given) is int and type(saved) is float:
        return saved == given
    return type(saved) is type(given) and saved == given


def _check_types(saved: dict[str, Any], model: type[BaseModel] = Config) -> None:
    """Every saved number or boolean has its field's type (never a string, never 1 for true)."""
    for key, value in saved.items():
        field = model.model_fields.get(key)
        if field is None:  # a method's own setting: the registries check those
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            _check_types(value, ann)
        elif ann is bool:
            assert isinstance(value, bool), (key, value)
        elif ann is int:
            assert isinstance(value, int) and not isinstance(value, bool), (key, value)
        elif ann is float or ann == int | float:
            assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)


BASE = tiny_config(rounds=2, attack={"name": "sign_flip", "f": 1})


@settings(max_examples=300, deadline=None, derandomize=True)
@given(items=st.lists(OVERRIDES, min_size=1, max_size=3))
def test_overrides_give_a_config_that_changes_only_what_they_name(items):
    base = to_toml_dict(make_config(BASE))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # attack.f disagreeing with a list of ids
            cfg = make_config(apply_overrides(BASE, items))
    except ConfigError as err:
        assert str(err).strip()
        return
    _check_saved(base, cfg, items)


def _check_saved(base: dict[str, Any], cfg: Config, items: list[str]) -> None:
    """``cfg`` (from ``base`` and the override ``items``) is strictly typed, reloads as itself,
    holds each value as given and differs from ``base`` only where the items name a key."""
    saved = to_toml_dict(cfg)
    _check_types(saved)
    assert to_toml_dict(make_config(tomllib.loads(tomli_w.dumps(saved)))) == saved
    wanted = _set_by(items)
    if isinstance(cfg.attack.byzantine, list):
        wanted.pop("attack.f", None)  # f is the listed ids' count
        may_change = {*wanted, "attack.f"}
    else:
        may_change = set(wanted)
    old, new = _leaves(base), _leaves(saved)
    changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
    assert changed <= may_change, (changed - may_change, items)  # merged, never reset
    for key, value in wanted.items():
        assert _same(new[key], value), (key, new[key], value)  # what was set is what is saved


@settings(max_examples=150, deadline=None, derandomize=True)
@given(items=st.lists(OVERRIDES, min_size=1, max_size=3))
def test_load_config_gives_a_config_or_a_config_error(items):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = load_config(None, items)
    except ConfigError as err:
        assert str(err).strip()
        return
    _check_saved(to_toml_dict(make_config({})), cfg, items)  # from the defaults


# keys the demo takes from --set (its model, dataset and defenses are fixed)
CLI_KEYS = [k for k in KEYS if k not in ("rounds",)]
CLI_OVERRIDES = st.one_of(
    GOOD_ITEMS,
    GOOD_TABLES,
    st.tuples(st.sampled_from(CLI_KEYS), VALUES).map("=".join),
    st.tuples(st.sampled_from(["clients", "eval", "optim"]), TABLES).map("=".join),
    st.tuples(st.sampled_from(UNKNOWN), SCALARS).map("=".join),
    st.text(max_size=12),
)


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(items=st.lists(CLI_OVERRIDES, min_size=1, max_size=2))
def test_cli_run_is_a_run_or_one_error_and_nothing_written(items, tmp_path_factory, capsys):
    out: Path = tmp_path_factory.mktemp("fuzz") / "out"
    argv = ["run", "--rounds", "2", "--out", str(out), "--quiet"]
    argv += [f"--set={item}" for item in items]  # `--set=`: an item may start with '-'
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 2:
        assert any(line.startswith("error:") for line in err.splitlines()), err
        assert not out.exists(), sorted(p.name for p in out.rglob("*"))
        return
    assert code == 0, (code, err)
    for agg in ("mean", "diversefl"):
        base = to_toml_dict(make_config({**demo_config(agg), "rounds": 2}))
        _check_saved(base, load_config(out / agg / "config.toml"), items)
        assert json.loads((out / agg / "summary.json").read_text())["rounds"] == 2
