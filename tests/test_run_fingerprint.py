"""A checkpoint belongs to the config that wrote it: it records the config and its fingerprint
(SHA-256 of the resolved config without `rounds`, which `--resume --rounds N` may raise), and a
resume refuses a checkpoint or a config.toml from another run, naming every key that differs.
Checkpoints written before fingerprints existed still resume, on config.toml's word, with a
warning."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

import diversefl
from diversefl.cli import main
from diversefl.config import make_config
from diversefl.engine.resume import config_differences, config_fingerprint
from diversefl.results import RunDirError, load_checkpoint

DFL = tiny_config(
    rounds=20,
    attack={"name": "sign_flip", "f": 1},
    aggregator={"name": "diversefl", "quarantine": 0.3},
    eval={"every": 5, "checkpoint_every": 10},
)
MEDIAN = {**DFL, "aggregator": {"name": "median"}, "seed": 3}


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _err(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


def test_the_fingerprint_ignores_rounds_and_nothing_else():
    base = make_config(DFL)
    assert config_fingerprint(base) == config_fingerprint(make_config({**DFL, "rounds": 99}))
    for changed in ({**DFL, "seed": 1}, {**DFL, "eval": {**DFL["eval"], "every": 2}}):
        assert config_fingerprint(make_config(changed)) != config_fingerprint(base)
    assert config_differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3, "d": 4}}) == [
        "b.c: checkpoint 2, now 3",
        "b.d: checkpoint 'unset', now 4",
    ]


@pytest.mark.slow
def test_a_checkpoint_from_another_run_is_refused_naming_the_keys(tmp_path: Path, capsys):
    """A median run's checkpoint copied into a DiverseFL run: refused, nothing touched (it
    used to be loaded into the DiverseFL federation and the two runs mixed silently)."""
    dfl, median = tmp_path / "dfl", tmp_path / "median"
    diversefl.run({**DFL, "rounds": 10}, out=dfl)
    diversefl.run(MEDIAN, out=median)
    shutil.copy(median / "checkpoint.pt", dfl / "checkpoint.pt")
    before = _snapshot(dfl)
    with pytest.raises(RunDirError) as caught:
        diversefl.run(DFL, out=dfl, resume=True)
    msg = str(caught.value)
    assert "checkpoint.pt was written by another config" in msg
    assert "aggregator.name: checkpoint 'median', now 'diversefl'" in msg
    assert (
        "aggregator.quarantine: checkpoint 'unset', now 0.3" in msg and "seed: checkpoint 3" in msg
    )
    assert _snapshot(dfl) == before
    assert main(["run", "--out", str(dfl), "--resume", "--quiet"]) == 2
    assert "error: " in _err(capsys) and _snapshot(dfl) == before


def test_a_config_toml_from_another_run_is_refused(tmp_path: Path, capsys):
    """`run --out DIR --resume` goes on with DIR/config.toml: one copied from another run no
    longer drives the run's checkpoint somewhere else."""
    dfl, median = tmp_path / "dfl", tmp_path / "median"
    diversefl.run({**DFL, "rounds": 10}, out=dfl)
    diversefl.run(MEDIAN, out=median)
    shutil.copy(median / "config.toml", dfl / "config.toml")
    before = _snapshot(dfl)
    assert main(["run", "--out", str(dfl), "--resume", "--quiet"]) == 2
    err = _err(capsys)
    assert "was written by another config" in err and "aggregator.name" in err
    assert _snapshot(dfl) == before


@pytest.mark.slow
def test_more_rounds_resume_from_a_fingerprinted_checkpoint(tmp_path: Path):
    """`rounds` is the one key outside the fingerprint: an extension goes on, and its new
    checkpoints record the new total."""
    out = tmp_path / "run"
    diversefl.run({**DFL, "rounds": 10}, out=out)
    longer = diversefl.run({**DFL, "rounds": 20}, out=out, resume=True)
    whole = diversefl.run(DFL, out=tmp_path / "whole")
    assert torch.equal(longer.theta, whole.theta)
    assert load_checkpoint(out / "checkpoint.pt")["config"]["rounds"] == 20


def _legacy(path: Path) -> None:
    """Rewrite a checkpoint as the code before fingerprints wrote it."""
    state = load_checkpoint(path)
    for key in ("format", "config", "config_sha256", "logs"):
        state.pop(key)
    buf = io.BytesIO()
    torch.save(state, buf)
    path.write_bytes(buf.getvalue())


@pytest.mark.slow
def test_an_older_checkpoint_resumes_with_a_warning(tmp_path: Path):
    """No fingerprint to compare: the resume trusts config.toml (which `run` compares with the
    given config), still checks the model's size and that the logs hold the rows up to the
    checkpoint, cuts them back by round as before, and says so."""
    cfg = {**DFL, "rounds": 30}
    whole = diversefl.run(cfg, out=tmp_path / "whole")
    out = tmp_path / "old"
    diversefl.run({**DFL, "rounds": 20}, out=out)
    (out / "summary.json").unlink()
    _legacy(out / "checkpoint.pt")
    with pytest.warns(UserWarning, match="written before checkpoints recorded their config"):
        resumed = diversefl.run(cfg, out=out, resume=True)
    assert torch.equal(resumed.theta, whole.theta)
    assert (out / "decisions.csv").read_bytes() == (
        tmp_path / "whole" / "decisions.csv"
    ).read_bytes()
    # an older checkpoint with a log that lacks rows before it: refused, not resumed
    diversefl.run({**DFL, "rounds": 20}, out=out, overwrite=True)
    (out / "summary.json").unlink()
    _legacy(out / "checkpoint.pt")
    lines = (out / "metrics.csv").read_text().splitlines(keepends=True)
    (out / "metrics.csv").write_text("".join(lines[:2]))  # header and round 5 only
    before = _snapshot(out)
    with pytest.raises(RunDirError, match=r"metrics.csv lacks the rows of rounds \[10, 15, 20\]"):
        diversefl.run(cfg, out=out, resume=True)
    assert _snapshot(out) == before
