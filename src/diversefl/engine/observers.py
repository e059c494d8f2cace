"""What the training loop tells the run's side jobs, one class each: metrics.csv, decisions.csv,
config.toml and summary.json, the checkpoint, the progress bar. The loop calls the hooks in
this order per round: ``on_eval`` (an evaluated round), ``on_round``, ``on_checkpoint`` (a
checkpoint round); ``on_start`` before the first round, ``close`` after the last (also on an
error), ``on_end`` with the summary of a finished run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

from diversefl.config import Config, to_toml_dict
from diversefl.engine.federation import Federation
from diversefl.engine.progress import ProgressBar
from diversefl.engine.resume import LogPoint, ResumePoint, config_fingerprint
from diversefl.engine.run_state import RunState
from diversefl.results import (
    DECISION_COLUMNS,
    METRIC_COLUMNS,
    CsvLog,
    atomic_write_bytes,
    save_checkpoint,
    write_json,
)
from diversefl.round import RoundRecord


class Observer:
    """Hooks of the training loop; each does nothing unless overridden."""

    def on_start(self, state: RunState) -> None:
        """Before the first round of this process (fresh or resumed)."""

    def on_eval(self, state: RunState, row: dict[str, Any]) -> None:
        """After an evaluated round, with its metrics.csv row."""

    def on_round(self, state: RunState, rec: RoundRecord) -> None:
        """After every round."""

    def on_checkpoint(self, state: RunState) -> None:
        """On a checkpoint round."""

    def close(self) -> None:
        """After the last round, or on an error."""

    def on_end(self, state: RunState, summary: dict[str, Any]) -> None:
        """After a finished run, with its summary."""


def notify(observers: list[Observer], hook: str, *args: Any) -> None:
    """Call ``hook`` on every observer, in order."""
    for ob in observers:
        getattr(ob, hook)(*args)


def _go_on(log: CsvLog, point: LogPoint, last_round: int) -> None:
    """Cut a log back to the checkpoint: to its recorded size, or (older checkpoints) by round."""
    if point.sha is not None:
        log.adopt(point.size, point.sha)
    else:
        log.truncate_after(last_round)


class MetricsLog(Observer):
    """metrics.csv: a row per evaluated round, on disk at every checkpoint."""

    def __init__(self, path: Path, columns: list[str], point: ResumePoint | None) -> None:
        self.log = CsvLog(path, columns)
        self.point = point

    def on_start(self, state: RunState) -> None:
        if self.point is None:
            self.log.path.parent.mkdir(parents=True, exist_ok=True)
            self.log.path.unlink(missing_ok=True)
            self.log.flush()  # the header
        else:
            _go_on(self.log, self.point.logs["metrics.csv"], self.point.round)

    def on_eval(self, state: RunState, row: dict[str, Any]) -> None:
        self.log.append(row)

    def on_checkpoint(self, state: RunState) -> None:
        self.log.flush()


class DecisionsLog(Observer):
    """decisions.csv: every client's decision (and scores) in every round."""

    def __init__(self, path: Path, point: ResumePoint | None) -> None:
        self.log = CsvLog(path, [])
        self.point = point

    def on_start(self, state: RunState) -> None:
        if self.point is not None:
            self.log.columns = self.point.columns("decisions.csv")
            _go_on(self.log, self.point.logs["decisions.csv"], self.point.round)

    def on_round(self, state: RunState, rec: RoundRecord) -> None:
        if not self.log.columns:
            self.log.columns = DECISION_COLUMNS + sorted(rec.scores)
        byz, acc = rec.byzantine.int().tolist(), rec.accepted.int().tolist()
        scores = {k: [round(float(x), 6) for x in v.tolist()] for k, v in rec.scores.items()}
        for j in range(rec.accepted.shape[0]):
            row = {"round": rec.round, "client": j, "byzantine": byz[j], "accepted": acc[j]}
            for k, v in scores.items():
                row[k] = v[j]
            self.log.append(row)

    def on_checkpoint(self, state: RunState) -> None:
        self.log.flush()


class RunFiles(Observer):
    """config.toml and summary.json. A resumed run changes neither until its first checkpoint
    (an extension's new rounds, its summary dropped): a resume that fails before leaves the run
    as it was."""

    def __init__(self, out_dir: Path, cfg: Config, resumed: bool) -> None:
        self.out_dir, self.resumed = out_dir, resumed
        self.config = _toml_bytes(cfg)
        self.synced = not resumed

    def on_start(self, state: RunState) -> None:
        if not self.resumed:
            (self.out_dir / "decisions.csv").unlink(missing_ok=True)
            atomic_write_bytes(self.out_dir / "config.toml", self.config)

    def _sync(self) -> None:
        """config.toml says what the run now is (more rounds; rewritten if it was missing)."""
        if not self.synced:
            path = self.out_dir / "config.toml"
            if not path.is_file() or path.read_bytes() != self.config:
                atomic_write_bytes(path, self.config)
            self.synced = True

    def on_checkpoint(self, state: RunState) -> None:
        if not self.synced:
            self._sync()
            # going on: not finished until it writes a new summary
            (self.out_dir / "summary.json").unlink(missing_ok=True)

    def on_end(self, state: RunState, summary: dict[str, Any]) -> None:
        self._sync()
        write_json(self.out_dir / "summary.json", summary)


def _toml_bytes(cfg: Config) -> bytes:
    return tomli_w.dumps(to_toml_dict(cfg)).encode()


class Checkpointer(Observer):
    """checkpoint.pt: the loop's state, the federation's, the config that wrote it (and its
    fingerprint) and the size and SHA-256 of each log as it stands then."""

    def __init__(self, path: Path, cfg: Config, sim: Federation, logs: list[CsvLog]) -> None:
        self.path, self.sim, self.logs = path, sim, logs
        self.config = to_toml_dict(cfg)
        self.fingerprint = config_fingerprint(cfg)

    def on_checkpoint(self, state: RunState) -> None:
        save_checkpoint(
            self.path,
            {
                **state.saved(),
                "simulation": self.sim.state_dict(),
                "config": self.config,
                "config_sha256": self.fingerprint,
                "logs": {g.path.name: {"size": g.size, "sha256": g.sha256} for g in self.logs},
            },
        )
        state.saved_round = state.round


class Progress(Observer):
    """The progress bar (see :class:`~diversefl.engine.progress.ProgressBar`)."""

    def __init__(self, cfg: Config, start: int, enabled: bool) -> None:
        self.bar = ProgressBar(cfg.rounds, start, enabled=enabled, label=cfg.name or "run")
        self.shown = False

    def on_start(self, state: RunState) -> None:
        self.bar.__enter__()
        self.shown = True

    def on_round(self, state: RunState, rec: RoundRecord) -> None:
        self.bar.update(rec.round, state.last.get("test_accuracy"))

    def close(self) -> None:
        if self.shown:
            self.bar.__exit__(None, None, None)
            self.shown = False


def run_observers(
    cfg: Config, out_dir: Path | None, sim: Federation, point: ResumePoint | None, progress: bool
) -> list[Observer]:
    """The observers of one run, in the order their hooks run: logs flush before the
    checkpoint that records them."""
    observers: list[Observer] = []
    if out_dir is not None:
        metrics = MetricsLog(
            out_dir / "metrics.csv", METRIC_COLUMNS + sim.extra_metric_names, point
        )
        logs: list[MetricsLog | DecisionsLog] = [metrics]
        if cfg.eval.decisions:
            logs.append(DecisionsLog(out_dir / "decisions.csv", point))
        files = RunFiles(out_dir, cfg, resumed=point is not None)
        ckpt = Checkpointer(out_dir / "checkpoint.pt", cfg, sim, [g.log for g in logs])
        observers += [*logs, files, ckpt]
    start = 0 if point is None else point.round
    return [*observers, Progress(cfg, start, progress)]
