"""Config validation: every bad key or value is one clear error naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from diversefl.config import ConfigError, load_config, make_config, to_toml_dict


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["data.datasett=1"], "data.datasett: unknown key"),
        (["data.datasett=1"], "allowed keys here: dataset"),
        (["bogus=1"], "bogus: unknown key"),
        (["optim.lr=-1"], "optim.lr"),
        (["clients.n=0"], "clients.n"),
        (['clients.n="many"'], "clients.n"),
        (["clients.batch=1.5"], "clients.batch"),
        (["aggregator.name=krumm"], "unknown aggregator 'krumm' (did you mean 'krum'?); allowed:"),
        (["attack.name=xyz"], "attack.name: unknown attack 'xyz'; allowed:"),  # nothing close
        (["attack.name=alie_optt"], "(did you mean 'alie_opt'?)"),
        (["model.name=mpl"], "(did you mean 'mlp'?)"),
        (
            ["aggregator.name=diversefl", "aggregator.min_cosin=0.5"],
            "unknown setting for aggregator 'diversefl' (did you mean 'min_cosine'?)",
        ),
        (["aggregator.name=nnm+krum"], 'aggregator.pre = ["nnm"] and aggregator.name = "krum"'),
        (
            ["aggregator.name=arc+nnm+median"],
            """--set 'aggregator.pre=["arc", "nnm"]' --set aggregator.name=median""",
        ),
        (["attack.name=sign_flip", "attack.sigma=3"], "attack.sigma: unknown setting"),
        (['attack.name="gaussian"', 'attack.sigma="x"'], "attack.sigma"),
        (['data.dataset="svhn"'], "data.dataset"),
        (['optim.schedule="cosine"'], "optim.schedule"),
        (["attack.name=sign_flip", "attack.f=23"], "attack.f"),
        (["attack.name=sign_flip", "attack.byzantine=[0, 30]"], "attack.byzantine"),
        (["aggregator.name=diversefl", "aggregator.eps1=3"], "eps1"),
        # infinite or meaningless numbers, booleans where a number belongs
        (["optim.lr=1e999"], "optim.lr"),
        (['optim.lr="inf"'], "optim.lr"),
        (['data.alpha="nan"'], "data.alpha"),
        (["optim.gamma=1e999"], "optim.gamma"),
        (["clients.batch=true"], "clients.batch: expected a number or a name, got the boolean"),
        (["clients.n=true"], "clients.n"),
        (["optim.milestones=[-5]"], "optim.milestones"),
        (["seed=-1"], "seed"),
        (['engine.device="foo"'], "engine.device: 'foo' is not a torch device"),
        (['attack.name="gaussian"', "attack.sigma=-1"], "sigma must be finite and >= 0"),
        (['attack.name="same_value"', "attack.sigma=1e999"], "sigma must be finite"),
        (
            ['optim.schedule="warmup_step"', "optim.warmup_rounds=100", "optim.milestones=[50]"],
            "milestones: 50 falls inside the warmup",
        ),  # fmt: skip
    ],
)
def test_errors_name_the_key(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert needle in str(err.value)


def test_defaults_are_the_paper_softmax_setting():
    cfg = make_config({})
    assert cfg.clients.n == 23 and cfg.clients.batch == 300 and cfg.clients.sample == 30
    assert cfg.optim.schedule == "inv_sqrt" and cfg.optim.weight_decay == 0.0067


def test_roundtrip_and_file_errors(tmp_path: Path):
    import tomli_w

    cfg = load_config(None, ["aggregator.name=diversefl", "aggregator.eps2=3.0"])
    p = tmp_path / "c.toml"
    p.write_text(tomli_w.dumps(to_toml_dict(cfg)))
    assert to_toml_dict(load_config(p)) == to_toml_dict(cfg)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "latin1.toml").write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.toml: not UTF-8 text"):
        load_config(tmp_path / "latin1.toml")


def test_a_cuda_config_on_a_machine_without_cuda_is_a_config_error():
    """The shipped GPU presets parse anywhere; building their simulation without a CUDA
    device is a ConfigError naming the setting (exit 2), not a torch traceback."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    from conftest import tiny_config

    from diversefl.engine.simulator import Simulation

    cfg = make_config({**tiny_config(rounds=1), "engine": {"device": "cuda"}})
    with pytest.raises(ConfigError, match=r"engine.device = 'cuda': torch sees no CUDA device"):
        Simulation(cfg)


def test_attack_f_follows_a_list_of_byzantine_ids():
    """config.toml says how many attack: f becomes the list's count (plus also_seeded); an
    explicit f that disagrees is warned about, not silently overridden."""
    import warnings

    from conftest import tiny_config

    from diversefl.config import make_config, to_toml_dict

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = make_config(tiny_config(attack={"name": "sign_flip", "byzantine": [0, 1, 2]}))
    assert cfg.attack.f == 3 and to_toml_dict(cfg)["attack"]["f"] == 3
    both = {"name": "sign_flip", "byzantine": [4], "also_seeded": 1}
    assert make_config(tiny_config(attack=both)).attack.f == 2
    with pytest.warns(UserWarning, match=r"attack.f = 2, but attack.byzantine lists 3 ids"):
        told = make_config(
            tiny_config(attack={"name": "sign_flip", "f": 2, "byzantine": [0, 1, 2]})
        )
    assert told.attack.f == 3 and told.byzantine_count() == 3
    with warnings.catch_warnings():  # config.toml read back: agrees, no warning
        warnings.simplefilter("error")
        assert make_config(to_toml_dict(told)).attack.f == 3
