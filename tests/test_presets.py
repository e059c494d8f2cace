"""Presets shipped inside the package: reachable by name from any folder (run, sweep,
deploy-local), listed by ``diversefl presets``, and a mistyped name names the close matches."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

import diversefl
from diversefl.cli import main
from diversefl.config import ConfigError
from diversefl.experiments.sweep import load_sweep
from diversefl.presets import (
    PRESET_DIR,
    close_matches,
    describe,
    list_presets,
    preset_names,
    preset_path,
    resolve_config_arg,
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = Path(diversefl.__file__).parent / "configs"
SOFTMAX = SHIPPED / "paper" / "mnist-softmax.toml"


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder outside the checkout, with no configs/ in it."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_names_are_every_shipped_toml():
    expected = sorted(str(p.relative_to(SHIPPED))[: -len(".toml")] for p in SHIPPED.rglob("*.toml"))
    assert preset_names() == expected
    assert {"paper/mnist-softmax", "leaderboard/mnist-mlp"} <= set(expected)


def test_top_level_configs_is_the_package_folder():
    """One source of truth: the checkout's configs/ is a link to the package's presets."""
    top = REPO / "configs"
    assert top.is_symlink() and top.resolve() == PRESET_DIR.resolve() == SHIPPED.resolve()


@pytest.mark.parametrize(
    "spelling",
    [
        "paper/mnist-softmax",
        "paper/mnist-softmax.toml",
        "configs/paper/mnist-softmax.toml",
        "./configs/paper/mnist-softmax.toml",
    ],
)
def test_spellings_of_a_preset_resolve_from_another_folder(elsewhere: Path, spelling: str):
    if spelling.startswith("./"):  # an explicit relative path stays a path: not found here
        assert resolve_config_arg(spelling) == spelling
        return
    assert Path(resolve_config_arg(spelling)).samefile(SOFTMAX)


def test_an_existing_file_wins_over_a_preset_of_the_same_name(elsewhere: Path):
    local = elsewhere / "paper" / "mnist-softmax.toml"
    local.parent.mkdir()
    local.write_text("rounds = 3\n")
    assert resolve_config_arg("paper/mnist-softmax.toml") == "paper/mnist-softmax.toml"
    assert Path(resolve_config_arg("paper/mnist-softmax")).samefile(SOFTMAX)  # no such file


def test_absolute_and_empty_arguments_pass_through(elsewhere: Path):
    missing = str(elsewhere / "nope.toml")
    assert resolve_config_arg(missing) == missing  # the loader says "config file not found"
    assert resolve_config_arg("") == ""  # deploy-local's built-in demo


def test_unknown_name_lists_close_matches_and_the_presets_command():
    with pytest.raises(ConfigError) as err:
        preset_path("paper/mnist-sotfmax")
    text = str(err.value)
    assert "paper/mnist-softmax" in text and "`diversefl presets`" in text
    assert "\n" not in text
    assert close_matches("mnist-softmax")[:3] == [
        "label-flip/mnist-softmax",
        "leaderboard/mnist-softmax",
        "paper/mnist-softmax",
    ]
    with pytest.raises(ConfigError, match="no preset has that name \\(`diversefl presets`"):
        preset_path("zzzz/qqqq")  # nothing close: no "did you mean"


def test_names_never_leave_the_preset_folder():
    for name in ("../pyproject", "paper/../../cli", "/etc/passwd"):
        with pytest.raises(ConfigError):
            preset_path(name)


def test_run_a_preset_by_name_from_another_folder(elsewhere: Path, mnist_dir: Path, capsys):
    out = elsewhere / "r"
    args = ["run", "paper/mnist-softmax", "--rounds", "1", "--quiet", "--out", str(out)]
    assert main([*args, "--data-dir", str(mnist_dir)]) == 0
    saved = tomllib.loads((out / "config.toml").read_text())
    preset = tomllib.loads(SOFTMAX.read_text())
    assert saved["rounds"] == 1
    assert saved["model"]["name"] == preset["model"]["name"]
    assert saved["clients"]["n"] == preset["clients"]["n"]
    assert json.loads((out / "summary.json").read_text())["rounds"] == 1


def test_sweep_status_of_a_preset_by_name(elsewhere: Path, capsys):
    assert main(["sweep", "paper/mnist-softmax", "--status"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps the title
    # relative to this folder, and the preset's group in the path: the label-flip and the
    # leaderboard presets of the same stem get folders of their own
    assert "sweep mnist-softmax.toml in runs/paper/mnist-softmax" in out
    assert f"0 of {len(load_sweep(SOFTMAX))} runs done" in out
    assert main(["sweep", "label-flip/mnist-softmax", "--status"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "in runs/label-flip/mnist-softmax" in out
    local = elsewhere / "my-grid.toml"
    local.write_text(SOFTMAX.read_text())
    assert main(["sweep", str(local), "--status"]) == 0
    assert "in runs/my-grid" in " ".join(capsys.readouterr().out.split())


def test_unknown_preset_is_one_error_line_for_run_and_sweep(elsewhere: Path, capsys):
    for command in ("run", "sweep"):
        assert main([command, "paper/mnist-sotfmax"]) == 2
        err = " ".join(capsys.readouterr().err.split())  # rich wraps at the console width
        assert err.startswith("error: config file not found: paper/mnist-sotfmax")
        assert "did you mean paper/mnist-softmax" in err and "diversefl presets" in err


def test_deploy_local_resolves_presets(elsewhere: Path, monkeypatch, capsys):
    pytest.importorskip("flwr")
    from diversefl.flower import deploy
    from diversefl.flower.deploy_errors import DeployInputError

    seen = []

    def fake_deploy_local(config: str, *args: object, **kwargs: object) -> None:
        seen.append(config)
        raise DeployInputError("stopped before starting anything")

    monkeypatch.setattr(deploy, "deploy_local", fake_deploy_local)
    assert main(["deploy-local", "paper/mnist-softmax", "--nodes", "3"]) == 2
    assert Path(seen[0]).samefile(SOFTMAX)
    assert main(["deploy-local", "paper/nope", "--nodes", "3"]) == 2
    assert "diversefl presets" in capsys.readouterr().err
    assert len(seen) == 1  # the unknown name was refused before deploying


def test_describe_takes_the_first_sentence_of_the_header(tmp_path: Path):
    f = tmp_path / "x.toml"
    f.write_text(
        "# Paper Section 4.1 / Figs. 3 and 9: softmax\n#   regression on MNIST, e.g. digits. "
        "More text.\nseed = 0  # not the header\n"
    )
    assert (
        describe(f) == "Paper Section 4.1 / Figs. 3 and 9: softmax regression on MNIST, e.g. digits"
    )
    f.write_text("# " + "word " * 60 + "\nseed = 0\n")
    long = describe(f)
    assert len(long) <= 130 and long.endswith("word...")
    f.write_text("seed = 0\n")
    assert describe(f) == ""


def test_presets_command_lists_every_preset(capsys):
    assert main(["presets", "--paths"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("\t")[0] for ln in lines] == preset_names()
    assert all(Path(ln.split("\t")[1]).is_file() for ln in lines)
    assert main(["presets"]) == 0
    table = capsys.readouterr().out
    for p in list_presets():
        assert p.name in table
    assert "Paper Section 4.1" in table
