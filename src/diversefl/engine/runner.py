"""The training loop: rounds of a :class:`~diversefl.engine.federation.Federation`, evaluation,
and the observers that write the run files, checkpoint and show progress
(:mod:`diversefl.engine.observers`). All math lives elsewhere."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import diversefl
from diversefl.config import Config
from diversefl.engine.federation import Federation
from diversefl.engine.observers import Observer, notify, run_observers
from diversefl.engine.preflight import build_federation
from diversefl.engine.progress import ProgressBar
from diversefl.engine.resume import read_resume_point
from diversefl.engine.run_state import RunState
from diversefl.results import read_csv, read_summary
from diversefl.round import RoundRecord

_ProgressBar = ProgressBar  # the old name (tests patch its PLAIN_EVERY)


class ModelDivergedError(ValueError):
    """The model became NaN or infinite: a setting (the learning rate, say) makes it diverge."""


@dataclass(frozen=True)
class RunResult:
    """What a run produced: per-evaluated-round metrics and the summary (also on disk)."""

    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    out_dir: Path | None = None
    theta: torch.Tensor | None = field(default=None, repr=False)

    @property
    def final_accuracy(self) -> float:
        """Test accuracy after the last round."""
        return float(self.summary["final_test_accuracy"])


def _versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diversefl": diversefl.__version__,
    }


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(device: torch.device) -> dict[str, str | int]:
    """Where a run ran: the same config and seed give the same numbers on the same machine,
    but another CPU or GPU rounds floats differently and a chaotic run (say, plain averaging
    under Gaussian noise) can end elsewhere, so every summary records it."""
    info: dict[str, str | int] = {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else (os.cpu_count() or 0),  # the cores this process may use
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def finished_without_checkpoint(out_dir: Path) -> bool:
    """A run directory with its summary but no checkpoint to continue from."""
    return (out_dir / "summary.json").exists() and not (out_dir / "checkpoint.pt").exists()


def train(
    cfg: Config,
    out_dir: Path | None = None,
    data_dir: str | None = None,
    resume: bool = False,
    progress: bool = True,
    sim: Federation | None = None,
) -> RunResult:
    """Run ``cfg`` to the end, writing the run directory when ``out_dir`` is given.

    With ``resume``, continue from ``out_dir/checkpoint.pt`` once it is checked to belong to
    this config and its logs (nothing is written before): metrics written after that
    checkpoint are cut and recomputed, giving exactly the rows an uninterrupted run writes.
    A model that turns NaN or infinite stops the run (:class:`ModelDivergedError`).
    """
    if resume and out_dir is not None and finished_without_checkpoint(out_dir):
        # nothing to redo (the committed leaderboard runs keep no checkpoint): the run as saved
        summary = read_summary(out_dir / "summary.json")
        return RunResult(read_csv(out_dir / "metrics.csv"), summary, out_dir)
    loop = RunLoop.open(cfg, out_dir, data_dir, resume, progress, sim)
    try:
        for r in loop.pending():
            loop.record(r, loop.step(r))
    finally:
        loop.close()
    return loop.finish()


class RunLoop:
    """One run's loop taken apart: :meth:`step` runs a round of the federation, :meth:`record`
    does the round's bookkeeping (evaluation, observers, checkpoints). :func:`train` calls
    them in turn; a packed sweep steps several runs' rounds first and records them after, so
    that their federations can share one batched computation per round."""

    def __init__(
        self,
        cfg: Config,
        out_dir: Path | None,
        sim: Federation,
        state: RunState,
        observers: list[Observer],
    ) -> None:
        self.cfg, self.out_dir, self.sim = cfg, out_dir, sim
        self.state, self.observers = state, observers
        self.closed = False

    @classmethod
    def open(
        cls,
        cfg: Config,
        out_dir: Path | None = None,
        data_dir: str | None = None,
        resume: bool = False,
        progress: bool = True,
        sim: Federation | None = None,
    ) -> RunLoop:
        """Build the federation (unless given), read the resume point, start the observers."""
        sim = sim or build_federation(cfg, data_dir)
        point = None
        if resume and out_dir is not None and (out_dir / "checkpoint.pt").exists():
            point = read_resume_point(cfg, out_dir, sim)
        state = RunState() if point is None else RunState.resumed(point.saved, point.rows)
        loop = cls(cfg, out_dir, sim, state, run_observers(cfg, out_dir, sim, point, progress))
        try:
            notify(loop.observers, "on_start", state)
        except BaseException:
            loop.close()
            raise
        return loop

    def pending(self) -> range:
        """The rounds still to run."""
        return range(self.state.round + 1, self.cfg.rounds + 1)

    def step(self, r: int) -> RoundRecord:
        """Round r of the federation; stops the run if the model became NaN or infinite."""
        rec = self.sim.step(r)
        check_finite(self.sim.theta, rec, self.state.saved_round)
        return rec

    def record(self, r: int, rec: RoundRecord) -> None:
        """Count round r's decisions, evaluate on the evaluation rounds, checkpoint."""
        state, cfg = self.state, self.cfg
        state.add(rec)
        if r % cfg.eval.every == 0 or r == cfg.rounds:
            notify(
                self.observers, "on_eval", state, state.metrics_row(r, self.sim.evaluate(), rec.lr)
            )
        notify(self.observers, "on_round", state, rec)
        if r % cfg.eval.checkpoint_every == 0 or r == cfg.rounds:
            notify(self.observers, "on_checkpoint", state)

    def close(self) -> None:
        """Close the observers (files, progress bar); safe to call twice."""
        if not self.closed:
            self.closed = True
            notify(self.observers, "close")

    def finish(self, extra: dict[str, Any] | None = None) -> RunResult:
        """The summary (written by the observers; ``extra`` entries added or replaced) and
        the run's result."""
        summary = {**build_summary(self.cfg, self.sim, self.state), **(extra or {})}
        notify(self.observers, "on_end", self.state, summary)
        return RunResult(
            metrics=self.state.rows, summary=summary, out_dir=self.out_dir, theta=self.sim.theta
        )


def check_finite(theta: Tensor, rec: RoundRecord, saved_round: int) -> None:
    """Stop a run whose model became NaN or infinite in round ``rec.round`` (one read-only pass
    over the model): it would only go on at chance. The run files stay at the last checkpoint."""
    if bool(torch.isfinite(theta).all()):
        return
    kept = (
        f"the run files stay at its last checkpoint (round {saved_round})"
        if saved_round
        else "no checkpoint was written before"
    )
    raise ModelDivergedError(
        f"round {rec.round}: the model's weights became NaN or infinite, so training diverged "
        f"(the learning rate was {rec.lr:g}: a smaller optim.lr may help); {kept}"
    )


def build_summary(cfg: Config, sim: Federation, state: RunState) -> dict[str, Any]:
    """summary.json: final and best accuracy, detection rates, what ran where."""
    rows = state.rows
    final = float(rows[-1]["test_accuracy"]) if rows else sim.evaluate()["test_accuracy"]
    rates = state.total.rates()
    summary: dict[str, Any] = {
        "name": cfg.name,
        "final_test_accuracy": final,
        "best_test_accuracy": max([float(r["test_accuracy"]) for r in rows] + [final]),
        "rounds": cfg.rounds,
        "wall_seconds": round(state.elapsed(), 3),
        "seed": cfg.seed,
        "dataset": cfg.data.dataset,
        "model": cfg.model.name,
        "aggregator": cfg.aggregator.name,
        "attack": cfg.attack.name,
        "n": cfg.clients.n,
        "f": sim.f,
        "byzantine_ids": sim.byzantine_ids(),
        "mean_tpr": rates["tpr"] if rates["tpr"] != "" else None,
        "mean_fpr": rates["fpr"] if rates["fpr"] != "" else None,
        "mean_accepted": rates["n_accepted"],
        "n_params": sim.n_params,
        "device": str(sim.device),
        "versions": _versions(),
        "machine": machine_info(sim.device),
    }
    summary.update(sim.extra_summary(rows))
    return summary


def read_csv_header(path: Path) -> list[str]:
    """The header row of a CSV file."""
    with path.open() as fh:
        return fh.readline().strip().split(",")
