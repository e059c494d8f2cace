"""Resuming a run from its checkpoint, checked whole before any file is touched: the checkpoint
loads (weights only, its checksum holds), was written by this config (its fingerprint), fits
the model, and the logs are the ones it continues (the size and SHA-256 of what they held when
it was saved). Only then does the loop cut the logs back and go on."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diversefl.config import Config, make_config, to_toml_dict
from diversefl.config_diff import (
    config_differences,  # noqa: F401 - its old import path
    setting_differences,
)
from diversefl.engine.federation import Federation
from diversefl.engine.run_state import WINDOW_FIELDS
from diversefl.results import (
    RunDirError,
    complete_row,
    load_checkpoint,
    open_plain,
    plain_file,
    read_csv,
)

#: what a resume may change: ``--resume --rounds N`` extends a run (nothing in a round depends
#: on the total). Everything else, eval and engine settings included, is as config.toml's own
#: rule: a run goes on with the settings it started with.
RESUMABLE_KEYS = ("rounds",)
AGAIN = "; --overwrite starts the run again"


def config_fingerprint(cfg: Config | dict[str, Any]) -> str:
    """SHA-256 of the resolved config without :data:`RESUMABLE_KEYS` (canonical JSON)."""
    raw = to_toml_dict(cfg) if isinstance(cfg, Config) else cfg
    text = json.dumps(_fixed(raw), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _fixed(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k not in RESUMABLE_KEYS}


@dataclass(frozen=True)
class LogPoint:
    """A log as the checkpoint left it: its first ``size`` bytes (hashed by ``sha``, to go on
    hashing what is appended); ``sha`` None for a checkpoint that records no size (older
    ones), where the log is cut back by round instead."""

    path: Path
    size: int
    sha: Any
    head: bytes  # the first line, or the whole prefix for metrics.csv (its rows are read back)


@dataclass(frozen=True)
class ResumePoint:
    """A checked checkpoint: the loop's saved state, the metric rows up to it and its logs."""

    saved: dict[str, Any]
    rows: list[dict[str, str]]
    logs: dict[str, LogPoint]

    @property
    def round(self) -> int:
        """The round the checkpoint was saved after."""
        return int(self.saved["round"])

    def columns(self, name: str) -> list[str]:
        """The header of log ``name``."""
        first = self.logs[name].head.split(b"\n", 1)[0].decode()
        return first.strip().split(",") if first.strip() else []


def read_resume_point(cfg: Config, out_dir: Path, sim: Federation | None = None) -> ResumePoint:
    """Check ``out_dir``'s checkpoint and logs against ``cfg`` (and, given ``sim``, load the
    state into it after checking the model fits), touching no file; a :class:`RunDirError`
    names what does not match. Without ``sim`` it is the early check a caller makes before
    building the federation."""
    path = out_dir / "checkpoint.pt"
    state = load_checkpoint(path)
    _check_loop_state(path, state, cfg)
    legacy = "format" not in state
    if legacy and sim is not None:  # said once: by the check that goes on to load it
        warnings.warn(
            f"{path} was written before checkpoints recorded their config and logs: resuming "
            "on config.toml's word (the model's size and the logs' rows are still checked)",
            stacklevel=2,
        )
    if legacy:
        logs = _legacy_logs(out_dir, cfg, state["round"])
    else:
        _check_fingerprint(path, state, cfg)
        logs = _checked_logs(out_dir, state, cfg)
    _check_writable(out_dir, logs)
    if sim is not None:
        _load_federation(path, state["simulation"], sim)
    metrics = logs["metrics.csv"]
    rows = list(csv.DictReader(io.StringIO(metrics.head.decode(), newline="")))
    if legacy:
        rows = [r for r in rows if complete_row(r) and int(r["round"]) <= state["round"]]
    keys = ("round", "best", "seconds", "total", "window")
    saved: dict[str, Any] = {k: state[k] for k in keys if k in state}
    return ResumePoint(saved=saved, rows=rows, logs=logs)


def _check_loop_state(path: Path, state: dict[str, Any], cfg: Config) -> None:
    """The loop's own fields: types, a round within the config's, counts that are counts."""
    r = state["round"]
    if type(r) is not int or r < 0:
        raise RunDirError(f"{path}: not a diversefl checkpoint (round {r!r}){AGAIN}")
    if r > cfg.rounds:
        raise RunDirError(
            f"{path}: saved after round {r}, past this config's rounds = {cfg.rounds}{AGAIN}"
        )
    for key in ("best", "seconds"):
        if type(state.get(key)) not in (int, float):
            raise RunDirError(f"{path}: not a diversefl checkpoint (no {key}){AGAIN}")
    for key in ("total", "window") if "window" in state else ("total",):
        counts = state.get(key)
        if (
            type(counts) is not dict
            or set(counts) != set(WINDOW_FIELDS)
            or any(type(v) is not int or v < 0 for v in counts.values())
        ):
            raise RunDirError(f"{path}: not a diversefl checkpoint (its {key} counts){AGAIN}")
    if type(state.get("simulation")) is not dict or "theta" not in state["simulation"]:
        raise RunDirError(f"{path}: not a diversefl checkpoint (no model){AGAIN}")


def current_form(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config record as :func:`to_toml_dict` writes it today: a record written
    before config.toml held the rule's and the attack's settings at their defaults lacks them,
    and a config that only spells out a default is the same config. A record that no longer
    validates is compared as it is (the difference is then named)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. attack.f next to a list of ids: said before
            return to_toml_dict(make_config(saved))
    except ValueError:  # ConfigError included
        return saved


def _check_fingerprint(path: Path, state: dict[str, Any], cfg: Config) -> None:
    """The checkpoint was written by this config (all but :data:`RESUMABLE_KEYS`)."""
    saved = state.get("config")
    if type(saved) is not dict or state.get("config_sha256") != config_fingerprint(saved):
        raise RunDirError(f"{path}: not a diversefl checkpoint (its config record){AGAIN}")
    saved = current_form(saved)
    if config_fingerprint(saved) == config_fingerprint(cfg):
        return
    diffs = setting_differences(_fixed(saved), _fixed(to_toml_dict(cfg)))
    rest = [d.split(":", 1)[0] for d in diffs[6:]]
    shown = "; ".join(diffs[:6]) + (f"; also {', '.join(rest)}" if rest else "")
    raise RunDirError(
        f"{path} was written by another config ({shown}): a checkpoint continues only the run "
        f"that wrote it{AGAIN}"
    )


def _checked_logs(out_dir: Path, state: dict[str, Any], cfg: Config) -> dict[str, LogPoint]:
    """Each log the checkpoint records is there and starts with what it held then."""
    records = state.get("logs")
    names = {"metrics.csv"} | ({"decisions.csv"} if cfg.eval.decisions else set())
    if type(records) is not dict or set(records) != names:
        raise RunDirError(f"{out_dir / 'checkpoint.pt'}: not a diversefl checkpoint{AGAIN}")
    logs = {}
    for name in sorted(names, reverse=True):  # metrics.csv first: the one every run has
        if type(records[name]) is not dict:
            raise RunDirError(f"{out_dir / 'checkpoint.pt'}: not a diversefl checkpoint{AGAIN}")
        logs[name] = _checked_log(out_dir / name, records[name], state["round"])
    return logs


def _checked_log(path: Path, rec: dict[str, Any], r: int) -> LogPoint:
    size, want = rec.get("size"), rec.get("sha256")
    if type(size) is not int or size < 0 or type(want) is not str:
        raise RunDirError(f"{path.parent / 'checkpoint.pt'}: not a diversefl checkpoint{AGAIN}")
    _require(path, r)
    sha, head, left = hashlib.sha256(), b"", size
    with open_plain(path) as fh:
        while left > 0:
            chunk = fh.read(min(left, 1 << 20))
            if not chunk:
                break
            sha.update(chunk)
            if path.name == "metrics.csv" or not head:
                head += chunk
            left -= len(chunk)
    if left > 0 or sha.hexdigest() != want:
        raise RunDirError(
            f"{path} is not the log the checkpoint (round {r}) continues: its first {size} "
            f"bytes changed since (or it was cut or replaced); restore it{AGAIN}"
        )
    return LogPoint(path, size, sha, head)


def _require(path: Path, r: int) -> None:
    if not plain_file(path):
        raise RunDirError(
            f"{path} is missing: the checkpoint (round {r}) continues a run whose "
            f"{path.name} is gone, and resuming would leave it partial; restore it{AGAIN}"
        )


def _legacy_logs(out_dir: Path, cfg: Config, r: int) -> dict[str, LogPoint]:
    """An older checkpoint's logs: present, and metrics.csv holds every evaluated round up to
    the checkpoint (they are cut back by round, as they were then)."""
    names = ["metrics.csv"] + (["decisions.csv"] if cfg.eval.decisions else [])
    logs = {}
    for name in names:
        _require(out_dir / name, r)
        with open_plain(out_dir / name) as fh:
            head = fh.read() if name == "metrics.csv" else fh.readline()
        logs[name] = LogPoint(out_dir / name, len(head), None, head)
    rows = read_csv(out_dir / "metrics.csv")
    have = {int(x["round"]) for x in rows if complete_row(x)}
    missing = [k for k in range(cfg.eval.every, r + 1, cfg.eval.every) if k not in have]
    if missing:
        raise RunDirError(
            f"{out_dir / 'metrics.csv'} lacks the rows of rounds {missing[:5]} before the "
            f"checkpoint (round {r}): it is not the log that checkpoint continues{AGAIN}"
        )
    return logs


def _check_writable(out_dir: Path, logs: dict[str, LogPoint]) -> None:
    """The run can write what it will write (else it would fail after its first rounds)."""
    for path in (out_dir, *(log.path for log in logs.values())):
        if not os.access(path, os.W_OK):
            raise RunDirError(f"{path} is not writable: the run could not go on")


def _load_federation(path: Path, saved: dict[str, Any], sim: Federation) -> None:
    """Load the federation's state after checking the model is this config's model."""
    theta = saved["theta"]
    if not isinstance(theta, torch.Tensor) or theta.dim() != 1:
        raise RunDirError(f"{path}: not a diversefl checkpoint (its model){AGAIN}")
    if theta.numel() != sim.n_params or theta.dtype != sim.theta.dtype:
        raise RunDirError(
            f"{path}: its model has {theta.numel()} {theta.dtype} parameters, this config's "
            f"model {sim.n_params} {sim.theta.dtype}: not this run's checkpoint{AGAIN}"
        )
    if not bool(torch.isfinite(theta).all()):
        raise RunDirError(f"{path}: its model holds NaN or infinite weights{AGAIN}")
    try:
        sim.load_state_dict(saved)
    except Exception as err:  # noqa: BLE001 - any mismatch of a rule's state is the same error
        raise RunDirError(
            f"{path}: its federation state does not fit this run ({type(err).__name__}: "
            f"{err}){AGAIN}"
        ) from None
