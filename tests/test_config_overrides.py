"""Config holes an attacker's review found (issue 30, item 7): a table override that reset a
whole section, text after a value that was silently dropped, strings taken for numbers and
booleans, run names that leave runs/, and devices the project cannot run on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli_w
from conftest import tiny_config

from diversefl.cli import main
from diversefl.config import (
    ConfigError,
    apply_overrides,
    load_config,
    make_config,
    parse_value,
    to_toml_dict,
)


def _config_file(tmp_path: Path, **sections) -> Path:
    path = tmp_path / "cfg.toml"
    path.write_text(tomli_w.dumps(tiny_config(**sections)))
    return path


def _err(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())  # undo the console's line wrapping


# 1. a table value merges into the section it names ----------------------------------------


def test_a_table_override_merges_into_its_section(tmp_path: Path):
    """`clients={n=3}` sets clients.n and keeps the file's batch and sample (it used to replace
    the section, resetting them to the defaults 300 and 30)."""
    path = _config_file(tmp_path, attack={"name": "sign_flip", "f": 1})
    cfg = load_config(path, ["clients={n = 3}", "attack={f = 2}"])
    assert (cfg.clients.n, cfg.clients.batch, cfg.clients.sample) == (3, 0.5, 8)
    assert (cfg.attack.name, cfg.attack.f) == ("sign_flip", 2)


def test_a_table_override_leaves_the_callers_dict_alone():
    raw = {"clients": {"n": 6, "batch": 0.5}, "aggregator": {"name": "diversefl", "eps1": 0.4}}
    before = json.dumps(raw)
    out = apply_overrides(raw, ["clients={n = 3, sample = 4}", "aggregator={eps2 = 3.0}"])
    assert out == {
        "clients": {"n": 3, "batch": 0.5, "sample": 4},
        "aggregator": {"name": "diversefl", "eps1": 0.4, "eps2": 3.0},
    }
    assert json.dumps(raw) == before


def test_parsed_pairs_merge_like_text_overrides():
    """A sweep entry's `set` table gives parsed values as (key, value) pairs: a table merges,
    a dotted key sets one setting, and nothing is re-parsed from text."""
    raw = {"clients": {"n": 6, "batch": 0.5}}
    assert apply_overrides(raw, [("clients", {"n": 3})]) == {"clients": {"n": 3, "batch": 0.5}}
    assert apply_overrides(raw, [("clients.sample", 0.1)])["clients"]["sample"] == 0.1
    assert apply_overrides(raw, [("name", "a #b")])["name"] == "a #b"


def test_the_demo_refuses_an_aggregator_table_too(tmp_path: Path, capsys):
    """`--set aggregator={name="median"}` reached both demo runs (labelled mean and
    diversefl) past the demo's refusal of `--set aggregator.*`."""
    out = tmp_path / "demo"
    item = 'aggregator={name = "median"}'
    assert main(["run", "--rounds", "2", "--out", str(out), "--quiet", "--set", item]) == 2
    assert "the demo trains one federation with mean and diversefl" in _err(capsys)
    assert not out.exists()


def test_a_sweep_entry_set_table_merges_into_the_section(tmp_path: Path):
    """A grid entry's `set` gives parsed TOML values: a table (`clients = {n = 4}`, also as
    TOML dotted keys) merges into the section; before, it was re-written as JSON text, which
    is not TOML, and the cell failed."""
    from diversefl.experiments.sweep import load_sweep

    raw = tiny_config(rounds=2)
    raw["sweep"] = {
        "aggregators": [
            {"label": "n4", "name": "mean", "set": {"clients": {"n": 4}}},
            {"label": "s4", "name": "median", "set": {"clients.sample": 4}},
        ]
    }
    path = tmp_path / "grid.toml"
    path.write_text(tomli_w.dumps(raw))
    cells = {c.aggregator: c.config for c in load_sweep(path)}
    assert (cells["n4"].clients.n, cells["n4"].clients.batch, cells["n4"].clients.sample) == (
        4,
        0.5,
        8,
    )
    assert (cells["s4"].clients.n, cells["s4"].clients.sample) == (6, 4)


# 2. exactly one value per override ---------------------------------------------------------


@pytest.mark.parametrize(
    "item",
    [
        'rounds=3\n[attack]\nname = "gaussian"',
        "rounds=3\r\nseed = 4",
        "rounds=3 # x",
        "rounds=3#x",
        "rounds=3 4",
        "rounds=3, 4",
        'name="a" "b"',
        "attack.byzantine=[1] # ]",
        "rounds=",
        "name=a b",
        "name=it's",
        "clients={n = 3",
    ],
)
def test_text_after_a_value_is_refused(item):
    with pytest.raises(ConfigError) as err:
        load_config(None, [item])
    assert str(err.value).startswith(f"--set {item!r}: ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text,value",
    [
        ("krum", "krum"),
        ("fashion-mnist", "fashion-mnist"),
        ("cuda:1", "cuda:1"),
        ("c11-13+2__label_flip__seed0", "c11-13+2__label_flip__seed0"),
        ("[/x]", "[/x]"),  # not TOML, no separator in it: a word, printed as written in errors
        ('"gaussian"', "gaussian"),
        ('"a # b"', "a # b"),
        ("'a#b'", "a#b"),
        ("1e-3", 0.001),
        ("3", 3),
        ("true", True),
        ("[1, 2]", [1, 2]),
        ("{n = 3}", {"n": 3}),
        ("2024-05-01", "2024-05-01"),  # no setting is a date: a bare date is a name
    ],
)
def test_one_value_still_parses(text, value):
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("item", ["=3", ".n=3", "clients..n=3", "clients. =3", "a b=3", "n"])
def test_malformed_keys_are_refused(item):
    with pytest.raises(ConfigError, match=r"^--set "):
        apply_overrides({}, [item])


# 3. strings are not numbers or booleans -----------------------------------------------------


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (['rounds="3"'], "rounds: Input should be a valid integer (got '3')"),
        (['eval.decisions="yes"'], "eval.decisions: Input should be a valid boolean (got 'yes')"),
        (["eval.decisions=1"], "eval.decisions: Input should be a valid boolean (got 1)"),
        (["rounds=3.0"], "rounds: Input should be a valid integer (got 3.0)"),
        (['optim.lr="0.1"'], "optim.lr: Input should be a valid number (got '0.1')"),
        (['attack.f="2"'], "attack.f: Input should be a valid integer (got '2')"),
        (['optim.milestones=["5"]'], "optim.milestones[0]: Input should be a valid integer"),
        (
            ['clients.batch="0.5"'],
            "clients.batch: Input should be a valid integer, or a valid number (got '0.5')",
        ),
        (
            ["aggregator.name=diversefl", 'aggregator.eps1="0.5"'],
            "aggregator.eps1: Input should be a valid number (got '0.5')",
        ),
        (
            ["aggregator.name=diversefl", 'aggregator.per_layer="yes"'],
            "aggregator.per_layer: Input should be a valid boolean (got 'yes')",
        ),
        (
            ["aggregator.name=multi_krum", "aggregator.m=2.0"],
            "aggregator.m: Input should be a valid integer (got 2.0)",
        ),
        (
            ["attack.name=gaussian", 'attack.sigma="3"'],
            "attack.sigma: Input should be a valid number (got '3')",
        ),
    ],
)
def test_strings_are_not_numbers_or_booleans(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert needle in str(err.value)


def test_a_quoted_number_in_a_file_is_refused(tmp_path: Path):
    """The same rule for a config file: config.toml never gets a string where a number is."""
    path = tmp_path / "c.toml"
    path.write_text('rounds = "3"\n[eval]\ndecisions = "yes"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "rounds: Input should be a valid integer (got '3')" in str(err.value)
    assert "eval.decisions: Input should be a valid boolean (got 'yes')" in str(err.value)


def test_an_integer_is_a_valid_float_and_is_written_back_as_one():
    cfg = load_config(None, ["optim.lr=1", "aggregator.name=diversefl", "aggregator.eps2=3"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    saved = to_toml_dict(cfg)
    assert saved["optim"]["lr"] == 1.0 and saved["aggregator"]["eps2"] == 3
    assert to_toml_dict(make_config(saved)) == saved


# 4. a run name is one safe path component -----------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../../x", "..", ".", ".hidden", "a/b", "a\\b", "a b", "a..b", "x\x00", "é", "a" * 201]
)
def test_unsafe_run_names_are_refused(name):
    with pytest.raises(ConfigError) as err:
        make_config({"name": name})
    assert f"name: {name!r} is not a safe run name" in str(err.value)


@pytest.mark.parametrize("name", ["", "demo-mean", "c11-13+2__label_flip__seed0", "run_1.5"])
def test_safe_run_names_are_accepted(name):
    assert make_config({"name": name}).name == name


def test_a_run_name_cannot_write_outside_runs(tmp_path: Path, monkeypatch, capsys):
    """`name="../../x"` without --out used to put the run at runs/../../x, outside runs/."""
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    cfg = _config_file(tmp_path, rounds=2)
    assert main(["run", str(cfg), "--set", 'name="../../x"', "--quiet"]) == 2
    assert "name: '../../x' is not a safe run name" in _err(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "cfg.toml"]
    assert not any(cwd.iterdir())


# 5. devices the project does not run on -------------------------------------------------------


@pytest.mark.parametrize("device", ["mps", "meta", "xla", "hpu"])
def test_an_unsupported_device_type_is_a_config_error(device):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f'engine.device="{device}"'])
    assert f"engine.device: {device!r} is not supported" in str(err.value)


@pytest.mark.parametrize("device", ["mps", "meta", "MPS", "cuda:-1"])
def test_usable_device_refuses_in_one_line(device):
    from diversefl.engine.devices import usable_device

    with pytest.raises(ConfigError) as err:
        usable_device(device)
    assert str(err.value).startswith("engine.device") and "\n" not in str(err.value)


def test_a_missing_device_is_named():
    """A CUDA device this machine lacks: no CUDA at all, or an index past the last one."""
    import torch

    from diversefl.engine.devices import usable_device

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError) as err:
        usable_device(f"cuda:{count}")
    expected = "torch sees no CUDA device" if count == 0 else f"torch sees {count} CUDA device"
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("device", ["mps", "meta"])
def test_cli_device_is_one_error_line_and_writes_nothing(tmp_path: Path, capsys, device):
    out = tmp_path / "run"
    cfg = _config_file(tmp_path, rounds=2)
    assert main(["run", str(cfg), "--device", device, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"engine.device: {device!r} is not supported" in " ".join(err.split())
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert not out.exists()


# 4. a name is a string, and a union's error names every allowed kind --------------------------


@pytest.mark.parametrize("word", ["inf", "nan"])
def test_a_bare_inf_or_nan_for_a_name_is_the_name(word):
    """`--set attack.name=inf` names the Inf attack (TOML would read a float infinity, which no
    name is); the same word for a number setting stays the number."""
    assert apply_overrides({}, [f"attack.name={word}"]) == {"attack": {"name": word}}
    value = apply_overrides({}, [f"attack.sigma={word}"])["attack"]["sigma"]
    assert isinstance(value, float) and value != 1.0  # inf, or nan (which equals nothing)


def test_inf_attack_from_the_command_line_validates():
    cfg = make_config(apply_overrides(tiny_config(), ["attack.name=inf", "attack.f=1"]))
    assert cfg.attack.name == "inf"


def test_a_union_setting_error_names_every_allowed_kind():
    """min_cosine is a number or "auto": a typo says both, not only "a valid number"."""
    raw = apply_overrides(
        tiny_config(), ["aggregator.name=diversefl", "aggregator.min_cosine=autom"]
    )
    with pytest.raises(ValueError, match=r"min_cosine: .*valid number, or 'auto' \(got 'autom'\)"):
        make_config(raw)
