"""Fuzzing the run files under `diversefl run --out DIR --resume`: each of config.toml,
metrics.csv, decisions.csv, summary.json and checkpoint.pt of a finished and of an interrupted
run is truncated, corrupted, swapped with another run's or deleted. Whatever was done, the
command either fails with exit 2, an `error:` line and every file exactly as it was, or it
finishes a correct run: the files of an uninterrupted run. Never a traceback. Hypothesis picks
the cut and the corrupted byte, derandomized (the same cases every run)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import diversefl
from diversefl.cli import main
from diversefl.results import load_checkpoint

FILES = ("config.toml", "metrics.csv", "decisions.csv", "summary.json", "checkpoint.pt")
CFG = tiny_config(
    rounds=20,
    attack={"name": "sign_flip", "f": 1},
    aggregator={"name": "diversefl"},
    eval={"every": 5, "checkpoint_every": 10},
)
OTHER = {**CFG, "aggregator": {"name": "median"}}  # the run whose files are swapped in
VARYING = ("wall_seconds", "machine", "versions")  # summary fields that differ between runs


class Runs:
    """The two run directories fuzzed (never changed themselves), the run swapped in, and
    uninterrupted references by number of rounds (a corrupted config.toml may ask for more)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bases = {"finished": root / "finished", "interrupted": root / "interrupted"}
        diversefl.run(CFG, out=self.bases["finished"])
        _interrupt(CFG, self.bases["interrupted"])
        self.other = root / "other"
        diversefl.run(OTHER, out=self.other)
        self._refs = {CFG["rounds"]: self.bases["finished"]}

    def reference(self, rounds: int) -> Path:
        if rounds not in self._refs:
            self._refs[rounds] = self.root / f"ref{rounds}"
            diversefl.run({**CFG, "rounds": rounds}, out=self._refs[rounds])
        return self._refs[rounds]


def _interrupt(cfg: dict, out: Path) -> None:
    """Run ``cfg`` and kill it while it saves its last checkpoint: the logs hold the rows of
    rounds after the checkpoint it is left with (round 10)."""
    real, saves = os.replace, []

    def replace(src, dst, *a, **k):
        if Path(dst).name == "checkpoint.pt":
            saves.append(dst)
            if len(saves) == 2:
                raise KeyboardInterrupt
        return real(src, dst, *a, **k)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(os, "replace", replace)
        with pytest.raises(KeyboardInterrupt):
            diversefl.run(cfg, out=out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("fuzz"))


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _metric_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


def _summary(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in VARYING}


def _mutate(runs: Runs, d: Path, name: str, op: str, where: float = 0.0, mask: int = 1) -> None:
    path = d / name
    if op == "delete":
        path.unlink(missing_ok=True)
    elif op == "swap":
        shutil.copy(runs.other / name, path)
    elif not path.exists():
        return
    elif op == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: int(where * len(data))])
    else:  # corrupt one byte
        data = bytearray(path.read_bytes())
        if data:
            data[int(where * len(data))] ^= mask
        path.write_bytes(bytes(data))


def _resume_and_check(runs: Runs, state: str, name: str, op: str, **how: float) -> None:
    """Mutate a copy of the ``state`` run, resume it, and check the outcome (see the module)."""
    with tempfile.TemporaryDirectory(dir=runs.root) as tmp:
        d = Path(tmp) / "run"
        shutil.copytree(runs.bases[state], d)
        _mutate(runs, d, name, op, **how)
        before = _snapshot(d)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["run", "--out", str(d), "--resume", "--quiet"])
        text = err.getvalue()
        assert "Traceback" not in text
        if code == 2:
            assert text.startswith("error: "), text
            assert _snapshot(d) == before, f"{state} {name} {op} {how}: files changed: {text}"
            return
        assert code == 0, text
        _check_correct(runs, d)


def _check_correct(runs: Runs, d: Path) -> None:
    """``d`` holds the files of an uninterrupted run (of the rounds its config.toml says)."""
    rounds = json.loads((d / "summary.json").read_text())["rounds"]
    ref = runs.reference(rounds)
    assert sorted(p.name for p in d.iterdir()) in (
        sorted(FILES),
        sorted(set(FILES) - {"checkpoint.pt"}),
    )
    assert (d / "config.toml").read_bytes() == (ref / "config.toml").read_bytes()
    assert _metric_rows(d / "metrics.csv") == _metric_rows(ref / "metrics.csv")
    assert (d / "decisions.csv").read_bytes() == (ref / "decisions.csv").read_bytes()
    assert _summary(d / "summary.json") == _summary(ref / "summary.json")
    if (d / "checkpoint.pt").exists():
        got = load_checkpoint(d / "checkpoint.pt")["simulation"]["theta"]
        assert torch.equal(got, load_checkpoint(ref / "checkpoint.pt")["simulation"]["theta"])


STATES = ("finished", "interrupted")


@pytest.mark.parametrize("op", ["swap", "delete"])
@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("state", STATES)
def test_a_swapped_or_deleted_run_file(runs: Runs, state: str, name: str, op: str) -> None:
    _resume_and_check(runs, state, name, op)


@pytest.mark.parametrize("op", ["truncate", "corrupt"])
@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("state", STATES)
@settings(
    max_examples=4,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(where=st.floats(0.0, 1.0, exclude_max=True), mask=st.integers(1, 255))
@pytest.mark.slow
def test_a_truncated_or_corrupted_run_file(
    runs: Runs, state: str, name: str, op: str, where: float, mask: int
) -> None:
    _resume_and_check(runs, state, name, op, where=where, mask=mask)
