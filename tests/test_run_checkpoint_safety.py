"""A checkpoint is read without running code: a pickle payload planted as checkpoint.pt in a run
directory never runs on any resume path (Python API, `run --resume`, `--resume --rounds`, the
runner the Flower server and sweeps call), and is refused with one clear error. Every
checkpoint the project writes loads that way, for every aggregation rule and protocol."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
import tomli_w
import torch
from conftest import tiny_config

import diversefl
from diversefl import aggregators
from diversefl.cli import main
from diversefl.config import make_config, to_toml_dict
from diversefl.engine.runner import train
from diversefl.protocols import PROTOCOLS
from diversefl.results import RunDirError, load_checkpoint, save_checkpoint


class _Payload:
    """Unpickling this runs ``exec`` on code that creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _plant(path: Path, marker: Path) -> None:
    """A checkpoint.pt shaped like the real thing, with the payload inside."""
    buf = io.BytesIO()
    torch.save({"round": 10, "best": 0.5, "simulation": {"theta": _Payload(marker)}}, buf)
    path.write_bytes(buf.getvalue())


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture
def planted(tmp_path: Path) -> tuple[dict, Path, Path]:
    """An interrupted run (30 of 40 rounds) whose checkpoint.pt was replaced by a payload."""
    cfg = tiny_config(rounds=40, eval={"every": 5, "checkpoint_every": 10})
    out = tmp_path / "run"
    diversefl.run({**cfg, "rounds": 30}, out=out)
    (out / "summary.json").unlink()
    (out / "config.toml").write_text(tomli_w.dumps(to_toml_dict(make_config(cfg))))
    marker = tmp_path / "pwned"
    _plant(out / "checkpoint.pt", marker)
    # the test's own check that the payload is live: an unsafe load does run it
    live = tmp_path / "live"
    _plant(tmp_path / "probe.pt", live)
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert live.exists()
    return cfg, out, marker


def test_a_planted_payload_never_runs_on_the_python_api(planted):
    cfg, out, marker = planted
    before = _snapshot(out)
    with pytest.raises(RunDirError, match=r"checkpoint.pt: not a diversefl checkpoint: it asks "):
        diversefl.run(cfg, out=out, resume=True)
    assert not marker.exists()
    assert _snapshot(out) == before
    # the runner itself (what a Flower server's resume and a sweep's cell call)
    with pytest.raises(RunDirError, match="the Python object exec"):
        train(make_config(cfg), out, resume=True, progress=False)
    assert not marker.exists()
    assert _snapshot(out) == before


@pytest.mark.parametrize("extra", [[], ["--rounds", "50"]], ids=["resume", "resume-more-rounds"])
def test_a_planted_payload_never_runs_on_the_cli(planted, tmp_path: Path, capsys, extra):
    cfg, out, marker = planted
    cfg_path = tmp_path / "cfg.toml"
    cfg_path.write_text(tomli_w.dumps(cfg))
    before = _snapshot(out)
    for args in (["run", str(cfg_path)], ["run"]):  # with the config, and from config.toml
        code = main([*args, "--out", str(out), "--resume", "--quiet", *extra])
        err = "".join(capsys.readouterr().err.split())  # the console wraps long lines
        assert code == 2
        assert err.startswith("error:") and "checkpoint.pt:notadiverseflcheckpoint" in err
        assert "weights_only" not in err and "Traceback" not in err  # no unsafe advice
        assert not marker.exists()
        assert _snapshot(out) == before


def test_a_planted_payload_in_a_sweep_cell_never_runs(tmp_path: Path):
    """A sweep resumes a cell that has a checkpoint.pt: the payload is refused there too."""
    from diversefl.experiments.sweep import load_sweep, run_sweep

    grid = tiny_config(rounds=20, attack={"name": "none", "f": 1})
    grid["sweep"] = {"aggregators": ["mean"], "attacks": ["none"]}
    path = tmp_path / "grid.toml"
    path.write_text(tomli_w.dumps(grid))
    out = tmp_path / "sweep"
    run_sweep(load_sweep(path), out=out, progress=False, echo=lambda *a: None)
    (cell,) = [p for p in out.iterdir() if p.is_dir()]
    (cell / "summary.json").unlink()
    marker = tmp_path / "pwned"
    _plant(cell / "checkpoint.pt", marker)
    with pytest.raises(RunDirError, match="not a diversefl checkpoint"):
        run_sweep(load_sweep(path), out=out, progress=False, echo=lambda *a: None)
    assert not marker.exists()


def _methods() -> list[tuple[str, dict]]:
    """Every registered rule and protocol, and DiverseFL with the stateful hardening."""
    names = sorted(aggregators.REGISTRY) + sorted(PROTOCOLS)
    return [(n, {}) for n in names] + [("diversefl", {"quarantine": 0.3, "min_cosine": 0.1})]


@pytest.mark.parametrize("name,params", _methods(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_checkpoint_the_project_writes_loads_weights_only(tmp_path: Path, name, params):
    """The saved state (theta, a rule's state: DiverseFL's quarantine counts, centered
    clipping's momentum, RSA's client models) is tensors and plain values only, so the safe
    reader loads it; and a resume from it gives the uninterrupted run."""
    if name == "noisy_median":
        params = {"sigma": 0.0}
    raw = tiny_config(
        rounds=6,
        clients={"n": 11, "batch": 0.5, "sample": 6},
        attack={"name": "sign_flip", "byzantine": [1, 4]},
        aggregator={"name": name, **params},
        eval={"every": 2, "checkpoint_every": 2},
    )
    whole = diversefl.run(raw, out=tmp_path / "whole")
    half = tmp_path / "half"
    diversefl.run({**raw, "rounds": 3}, out=half)
    state = torch.load(half / "checkpoint.pt", weights_only=True)  # the safe reader, directly
    assert state["round"] == 3 and state["simulation"]["theta"].shape == whole.theta.shape
    resumed = diversefl.run(raw, out=half, resume=True)
    assert torch.equal(resumed.theta, whole.theta)


def test_a_damaged_checkpoint_is_refused_not_resumed_from(tmp_path: Path):
    """torch checks no checksum: a flipped bit in the model's bytes loads silently. The
    checkpoint's own SHA-256 catches it."""
    out = tmp_path / "run"
    diversefl.run(tiny_config(rounds=10), out=out)
    state = load_checkpoint(out / "checkpoint.pt")
    data = bytearray((out / "checkpoint.pt").read_bytes())
    at = bytes(data).find(state["simulation"]["theta"].numpy().tobytes()[:32])
    assert at > 0
    data[at + 5] ^= 0x01
    (out / "checkpoint.pt").write_bytes(bytes(data))
    with pytest.raises(RunDirError, match=r"checkpoint.pt: damaged"):
        load_checkpoint(out / "checkpoint.pt")


def test_only_tensors_and_plain_values_are_saved(tmp_path: Path):
    """What could not be read back safely is refused when saved, naming where it is."""
    with pytest.raises(TypeError, match=r"state.extra: a \w*Path cannot go into a checkpoint"):
        save_checkpoint(tmp_path / "c.pt", {"round": 1, "extra": Path("x")})
    assert not (tmp_path / "c.pt").exists()
    save_checkpoint(tmp_path / "c.pt", {"round": 1, "m": {"a": [1, 2.5, None, "s", True]}})
    assert load_checkpoint(tmp_path / "c.pt")["m"] == {"a": [1, 2.5, None, "s", True]}


def test_a_checkpoint_that_is_a_link_is_not_followed(tmp_path: Path):
    out = tmp_path / "run"
    diversefl.run(tiny_config(rounds=10), out=out)
    shutil.move(out / "checkpoint.pt", tmp_path / "elsewhere.pt")
    os.symlink(tmp_path / "elsewhere.pt", out / "checkpoint.pt")
    (out / "summary.json").unlink()
    with pytest.raises(RunDirError, match=r"checkpoint.pt is a symbolic link"):
        diversefl.run(tiny_config(rounds=10), out=out, resume=True)
