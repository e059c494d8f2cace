"""The training loop: orchestrates a :class:`Simulation`, evaluation, run files, checkpoints
and the progress bar. All math lives elsewhere."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import diversefl
from diversefl.config import Config, to_toml_dict
from diversefl.engine.federation import Federation
from diversefl.engine.simulator import Simulation
from diversefl.results import (
    DECISION_COLUMNS,
    METRIC_COLUMNS,
    CsvLog,
    load_checkpoint,
    read_csv,
    read_summary,
    save_checkpoint,
    write_json,
    write_toml,
)
from diversefl.round import RoundRecord


@dataclass
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


@dataclass
class _Window:
    """Detection counts accumulated between two metric rows (and over the whole run)."""

    rounds: int = 0
    accepted: int = 0
    byz: int = 0
    byz_rejected: int = 0
    honest: int = 0
    honest_rejected: int = 0

    def add(self, rec: RoundRecord) -> None:
        rejected = ~rec.accepted
        self.rounds += 1
        self.accepted += int(rec.accepted.sum())
        self.byz += int(rec.byzantine.sum())
        self.byz_rejected += int((rejected & rec.byzantine).sum())
        self.honest += int((~rec.byzantine).sum())
        self.honest_rejected += int((rejected & ~rec.byzantine).sum())

    def rates(self) -> dict[str, float | str]:
        return {
            "n_accepted": round(self.accepted / max(1, self.rounds), 4),
            "tpr": round(self.byz_rejected / self.byz, 6) if self.byz else "",
            "fpr": round(self.honest_rejected / self.honest, 6) if self.honest else "",
        }


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


def _fmt(v: float) -> float:
    return round(float(v), 6)


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

    With ``resume``, continue from ``out_dir/checkpoint.pt``: metrics written after that
    checkpoint are cut and recomputed, giving exactly the rows an uninterrupted run writes.
    """
    if resume and out_dir is not None and finished_without_checkpoint(out_dir):
        # nothing to redo (the committed leaderboard runs keep no checkpoint): the run as saved
        summary = read_summary(out_dir / "summary.json")
        return RunResult(read_csv(out_dir / "metrics.csv"), summary, out_dir)
    sim = sim or Simulation(cfg, data_dir=data_dir)
    total, window = _Window(), _Window()
    start_round, best, elapsed = 0, 0.0, 0.0
    metrics_log = decisions_log = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics_log = CsvLog(out_dir / "metrics.csv", METRIC_COLUMNS + sim.extra_metric_names)
        dec_path = out_dir / "decisions.csv"
        if cfg.eval.decisions:
            decisions_log = CsvLog(dec_path, [])
        ckpt_path = out_dir / "checkpoint.pt"
        if resume and ckpt_path.exists():
            ckpt = load_checkpoint(ckpt_path)
            sim.load_state_dict(ckpt["simulation"])
            start_round, best, elapsed = ckpt["round"], ckpt["best"], ckpt["seconds"]
            total = _Window(**ckpt["total"])
            # the counts since the last metrics row: a checkpoint may fall between two rows
            # (older checkpoints lack them; in every shipped config checkpoints fall on a row)
            window = _Window(**ckpt.get("window", {}))
            metrics_log.truncate_after(start_round)
            if start_round < cfg.rounds:
                # going on (an extension to more rounds): not finished until it writes a new
                # summary; dropped only now that the checkpoint has loaded
                (out_dir / "summary.json").unlink(missing_ok=True)
            if decisions_log is not None and dec_path.exists():
                decisions_log.columns = list(read_csv_header(dec_path))
                decisions_log.truncate_after(start_round)
        else:
            for p in (metrics_log.path, dec_path):
                p.unlink(missing_ok=True)
            metrics_log.flush()
        write_toml(out_dir / "config.toml", to_toml_dict(cfg))

    rows = [dict(r) for r in read_csv(metrics_log.path)] if metrics_log else []
    bar = _ProgressBar(cfg.rounds, start_round, enabled=progress, label=cfg.name or "run")
    t0 = time.perf_counter() - elapsed
    last: dict[str, float] = {}
    with bar:
        for r in range(start_round + 1, cfg.rounds + 1):
            rec = sim.step(r)
            window.add(rec)
            total.add(rec)
            if decisions_log is not None:
                _log_decisions(decisions_log, rec)
            if r % cfg.eval.every == 0 or r == cfg.rounds:
                last = sim.evaluate()
                best = max(best, last["test_accuracy"])
                row = {
                    "round": r,
                    **{k: _fmt(v) for k, v in last.items()},
                    **window.rates(),
                    "lr": _fmt(rec.lr),
                    "seconds": round(time.perf_counter() - t0, 3),
                }
                rows.append(row)
                window = _Window()
                if metrics_log is not None:
                    metrics_log.append(row)
            if out_dir is not None and (r % cfg.eval.checkpoint_every == 0 or r == cfg.rounds):
                metrics_log.flush()
                if decisions_log is not None:
                    decisions_log.flush()
                save_checkpoint(
                    out_dir / "checkpoint.pt",
                    {
                        "round": r,
                        "best": best,
                        "seconds": time.perf_counter() - t0,
                        "total": total.__dict__.copy(),
                        "window": window.__dict__.copy(),
                        "simulation": sim.state_dict(),
                    },
                )
            bar.update(r, last.get("test_accuracy"))

    final = float(rows[-1]["test_accuracy"]) if rows else sim.evaluate()["test_accuracy"]
    rates = total.rates()
    summary: dict[str, Any] = {
        "name": cfg.name,
        "final_test_accuracy": final,
        "best_test_accuracy": max([float(r["test_accuracy"]) for r in rows] + [final]),
        "rounds": cfg.rounds,
        "wall_seconds": round(time.perf_counter() - t0, 3),
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
    if out_dir is not None:
        write_json(out_dir / "summary.json", summary)
    return RunResult(metrics=rows, summary=summary, out_dir=out_dir, theta=sim.theta)


def read_csv_header(path: Path) -> list[str]:
    """The header row of a CSV file."""
    with path.open() as fh:
        return fh.readline().strip().split(",")


def _log_decisions(log: CsvLog, rec: RoundRecord) -> None:
    if not log.columns:
        log.columns = DECISION_COLUMNS + sorted(rec.scores)
    n = rec.accepted.shape[0]
    byz = rec.byzantine.tolist()
    acc = rec.accepted.tolist()
    scores = {k: [round(float(x), 6) for x in v.tolist()] for k, v in rec.scores.items()}
    for j in range(n):
        row = {"round": rec.round, "client": j, "byzantine": int(byz[j]), "accepted": int(acc[j])}
        for k, v in scores.items():
            row[k] = v[j]
        log.append(row)


class _ProgressBar:
    """A rich progress bar showing round, test accuracy and rounds/s (no-op when disabled).
    Output that is not a terminal (nohup, a batch job's log) gets a plain line every
    ``PLAIN_EVERY`` seconds and at the end instead: a bar there shows only when the run ends."""

    PLAIN_EVERY = 30.0

    def __init__(self, total: int, start: int, enabled: bool, label: str) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console

        self.t0 = time.perf_counter()
        self.start, self.total, self.label = start, total, label
        console = Console()
        self.plain = not (console.is_terminal or console.is_jupyter)
        self.last_line = self.t0
        if self.plain:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("acc {task.fields[acc]}"),
            TextColumn("{task.fields[rate]} rounds/s"),
            TimeRemainingColumn(),
            transient=False,
        )
        self.task = self.progress.add_task(label, total=total, completed=start, acc="-", rate="-")

    def __enter__(self) -> _ProgressBar:
        if self.enabled and not self.plain:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled and not self.plain:
            self.progress.__exit__(*exc)

    def update(self, r: int, acc: float | None) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        rate = (r - self.start) / max(1e-9, now - self.t0)
        if self.plain:
            if r >= self.total or now - self.last_line >= self.PLAIN_EVERY:
                self.last_line = now
                left = (self.total - r) / rate if rate > 0 else 0.0
                shown = "-" if acc is None else f"{acc:.4f}"
                print(
                    f"{self.label}: round {r}/{self.total}, acc {shown}, {rate:.1f} rounds/s, "
                    f"{left:.0f} s left",
                    flush=True,
                )
            return
        self.progress.update(
            self.task,
            completed=r,
            acc="-" if acc is None else f"{acc:.4f}",
            rate=f"{rate:.1f}",
        )
