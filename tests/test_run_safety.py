"""Errors that used to destroy run files, or came out as tracebacks: everything a run or a resume
needs is checked before any file is touched (a checkpoint of the wrong model, a missing log, a
model that does not fit the data, an `--out` symlink loop, a run file planted as a link), a
failed extension leaves the finished run as it was, and a model that turns NaN stops the run
with the round named and its last good checkpoint kept."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import tomli_w
import torch
from conftest import tiny_config

import diversefl
from diversefl.cli import main
from diversefl.results import RunDirError, load_checkpoint, save_checkpoint

CFG = tiny_config(rounds=30, eval={"every": 5, "checkpoint_every": 10})


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _err(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


def _interrupted(tmp_path: Path, cfg: dict = CFG) -> Path:
    """``cfg`` (30 rounds) killed while it saved its round-30 checkpoint: its checkpoint is the
    round-20 one and its logs already hold the rows after it, as such a kill leaves them."""
    out = tmp_path / "run"
    real, saves = os.replace, []

    def replace(src, dst, *a, **k):
        if Path(dst).name == "checkpoint.pt":
            saves.append(dst)
            if len(saves) == 3:
                raise KeyboardInterrupt
        return real(src, dst, *a, **k)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(os, "replace", replace)
        with pytest.raises(KeyboardInterrupt):
            diversefl.run(cfg, out=out)
    assert load_checkpoint(out / "checkpoint.pt")["round"] == 20
    return out


@pytest.mark.slow
def test_a_checkpoint_of_another_model_touches_no_file(tmp_path: Path):
    """An MLP run's checkpoint in a softmax run (the shapes differ): refused before the logs
    are cut back (they used to be truncated first, then the load failed)."""
    out = _interrupted(tmp_path)
    mlp = tmp_path / "mlp"
    diversefl.run({**CFG, "rounds": 20, "model": {"name": "mlp"}}, out=mlp)
    saved = (out / "checkpoint.pt").read_bytes()
    shutil.copy(mlp / "checkpoint.pt", out / "checkpoint.pt")
    before = _snapshot(out)
    with pytest.raises(RunDirError, match="model.name: checkpoint 'mlp', now 'softmax'"):
        diversefl.run(CFG, out=out, resume=True)
    assert _snapshot(out) == before
    # this run's own checkpoint with a model of the wrong size (forged, checksum and all): the
    # shape check, again before any file changes
    (out / "checkpoint.pt").write_bytes(saved)
    own = load_checkpoint(out / "checkpoint.pt")
    own["simulation"]["theta"] = load_checkpoint(mlp / "checkpoint.pt")["simulation"]["theta"]
    save_checkpoint(out / "checkpoint.pt", own)
    before = _snapshot(out)
    with pytest.raises(RunDirError, match=r"its model has \d+ torch.float32 parameters"):
        diversefl.run(CFG, out=out, resume=True)
    assert _snapshot(out) == before


@pytest.mark.parametrize("log", ["metrics.csv", "decisions.csv"])
def test_a_missing_log_is_an_error_not_a_partial_file(tmp_path: Path, capsys, log: str):
    """Resuming without metrics.csv or decisions.csv used to go on and leave a log that starts
    at the checkpoint; now it is refused, naming the file, and nothing is written."""
    out = _interrupted(tmp_path)
    (out / log).unlink()
    before = _snapshot(out)
    assert main(["run", "--out", str(out), "--resume", "--quiet"]) == 2
    err = _err(capsys)
    assert err.startswith("error: ") and f"{log} is missing" in err
    assert _snapshot(out) == before


def _deny_writes(monkeypatch: pytest.MonkeyPatch, names: set[str]) -> None:
    """Make the files ``names`` read-only: for real (chmod) when not root, else by refusing to
    open them for writing, as the kernel would (root may write read-only files)."""
    real_os_open, real_path_open = os.open, Path.open

    def denied(path: object) -> PermissionError:
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    def os_open(path, flags, *a, **k):
        if Path(path).name in names and flags & (os.O_WRONLY | os.O_RDWR):
            raise denied(path)
        return real_os_open(path, flags, *a, **k)

    def path_open(self, mode="r", *a, **k):
        if self.name in names and any(c in mode for c in "wa+"):
            raise denied(self)
        return real_path_open(self, mode, *a, **k)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(Path, "open", path_open)


def test_a_failed_extension_leaves_the_finished_run_as_it_was(tmp_path: Path, capsys, monkeypatch):
    """`--resume --rounds 40` on a finished run whose logs cannot be written: the error names
    the file, and summary.json and config.toml are as they were (they used to be deleted and
    rewritten before the first write failed)."""
    cfg_path = tmp_path / "cfg.toml"
    cfg_path.write_text(tomli_w.dumps(CFG))
    out = tmp_path / "run"
    assert main(["run", str(cfg_path), "--out", str(out), "--quiet"]) == 0
    before = _snapshot(out)
    logs = {"metrics.csv", "decisions.csv"}
    if os.geteuid() == 0:
        _deny_writes(monkeypatch, logs)
    else:
        for name in logs:
            (out / name).chmod(0o444)
    assert main(["run", "--out", str(out), "--resume", "--rounds", "40", "--quiet"]) == 2
    err = _err(capsys)
    assert err.startswith("error: ") and "metrics.csv" in err and "Traceback" not in err
    assert _snapshot(out) == before


def test_a_diverging_model_stops_and_keeps_its_last_good_checkpoint(tmp_path: Path, capsys):
    """The learning rate jumps by 1e300 after round 12: the model turns infinite in round 13.
    The run stops with the round named (it used to finish at chance with exit 0), keeps its
    round-10 checkpoint and the logs up to it, and writes no summary."""
    cfg = tiny_config(
        rounds=30,
        optim={"lr": 0.5, "schedule": "step", "milestones": [12], "gamma": 1e300},
        eval={"every": 5, "checkpoint_every": 5},
    )
    cfg_path = tmp_path / "cfg.toml"
    cfg_path.write_text(tomli_w.dumps(cfg))
    out = tmp_path / "run"
    assert main(["run", str(cfg_path), "--out", str(out), "--quiet"]) == 2
    err = _err(capsys)
    assert err.startswith("error: round 13: the model's weights became NaN or infinite")
    assert "last checkpoint (round 10)" in err
    assert load_checkpoint(out / "checkpoint.pt")["round"] == 10
    assert torch.isfinite(load_checkpoint(out / "checkpoint.pt")["simulation"]["theta"]).all()
    assert not (out / "summary.json").exists()
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["5", "10"]
    # the example: a learning rate that overflows in the first round
    overflow = ["--set", "optim.lr=1e300", "--set", "optim.milestones=[]"]
    assert main(["run", str(cfg_path), "--out", str(tmp_path / "r2"), "--quiet", *overflow]) == 2
    assert "round 1: the model's weights became NaN" in _err(capsys)


def test_a_model_that_does_not_fit_the_data_is_refused_before_anything_is_written(
    tmp_path: Path, capsys
):
    """VGG-11 on 8x8 digits: one error line naming both settings (it used to be a 92-line
    traceback, exit 1, leaving config.toml and metrics.csv behind). With --overwrite the old
    run is still there afterwards."""
    cfg_path = tmp_path / "cfg.toml"
    cfg_path.write_text(tomli_w.dumps(tiny_config(rounds=3)))
    fresh = tmp_path / "new" / "run"
    args = ["run", str(cfg_path), "--quiet", "--set", "model.name=vgg11_gn"]
    assert main([*args, "--out", str(fresh)]) == 2
    err = _err(capsys)
    assert err.startswith("error: model.name = 'vgg11_gn' does not fit data.dataset = 'digits'")
    assert "1x8x8" in err and "Traceback" not in err
    assert not (tmp_path / "new").exists()
    old = tmp_path / "old"
    assert main(["run", str(cfg_path), "--quiet", "--out", str(old)]) == 0
    before = _snapshot(old)
    assert main([*args, "--out", str(old), "--overwrite"]) == 2
    assert "does not fit" in _err(capsys) and _snapshot(old) == before


def test_an_out_symlink_loop_is_a_clear_error(tmp_path: Path, capsys):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    cfg_path = tmp_path / "cfg.toml"
    cfg_path.write_text(tomli_w.dumps(tiny_config(rounds=3)))
    for out in ("a", "a/run"):
        assert main(["run", str(cfg_path), "--quiet", "--out", str(tmp_path / out)]) == 2
        assert "a symbolic link loop" in _err(capsys)


@pytest.mark.parametrize("name", ["metrics.csv", "decisions.csv", "summary.json"])
def test_a_run_file_planted_as_a_link_is_refused(tmp_path: Path, name: str):
    """A link planted in a shared run directory could make a resume append to (or read) a file
    elsewhere: refused, and the file it points to is left alone."""
    out = _interrupted(tmp_path)
    victim = tmp_path / "victim"
    shutil.move(out / name, victim) if (out / name).exists() else victim.write_text("{}")
    before = victim.read_bytes()
    (out / name).symlink_to(victim)
    with pytest.raises(RunDirError, match=f"{name} is a symbolic link"):
        diversefl.run(CFG, out=out, resume=True)
    assert victim.read_bytes() == before
