"""The training loop's running figures: the last round done, the best accuracy, detection
counts over the run and since the last metrics row, the metric rows and the clock. What a
checkpoint saves of them is :meth:`RunState.saved`; a resume starts from it again."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from diversefl.round import RoundRecord


@dataclass
class Window:
    """Detection counts accumulated between two metric rows (and over the whole run)."""

    rounds: int = 0
    accepted: int = 0
    byz: int = 0
    byz_rejected: int = 0
    honest: int = 0
    honest_rejected: int = 0

    def add(self, rec: RoundRecord) -> None:
        """Count one round's decisions."""
        rejected = ~rec.accepted
        self.rounds += 1
        self.accepted += int(rec.accepted.sum())
        self.byz += int(rec.byzantine.sum())
        self.byz_rejected += int((rejected & rec.byzantine).sum())
        self.honest += int((~rec.byzantine).sum())
        self.honest_rejected += int((rejected & ~rec.byzantine).sum())

    def rates(self) -> dict[str, float | str]:
        """Mean accepted per round, and the share of Byzantine (tpr) and honest (fpr) updates
        rejected ('' where there were none)."""
        return {
            "n_accepted": round(self.accepted / max(1, self.rounds), 4),
            "tpr": round(self.byz_rejected / self.byz, 6) if self.byz else "",
            "fpr": round(self.honest_rejected / self.honest, 6) if self.honest else "",
        }


WINDOW_FIELDS = tuple(f.name for f in fields(Window))


def _fmt(v: float) -> float:
    return round(float(v), 6)


@dataclass
class RunState:
    """Where the loop stands; ``saved_round`` is the round of the last checkpoint written (or
    resumed from), 0 before the first."""

    round: int = 0
    best: float = 0.0
    total: Window = field(default_factory=Window)
    window: Window = field(default_factory=Window)
    rows: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, float] = field(default_factory=dict)
    saved_round: int = 0
    t0: float = field(default_factory=time.perf_counter)

    @classmethod
    def resumed(cls, saved: dict[str, Any], rows: list[dict[str, Any]]) -> RunState:
        """The state a checkpoint saved (:meth:`saved`), with the metric rows up to it."""
        return cls(
            round=saved["round"],
            best=saved["best"],
            total=Window(**saved["total"]),
            # the counts since the last metrics row: a checkpoint may fall between two rows
            window=Window(**saved.get("window", {})),
            rows=[dict(r) for r in rows],
            saved_round=saved["round"],
            t0=time.perf_counter() - saved["seconds"],
        )

    def elapsed(self) -> float:
        """Wall seconds of the run so far (resumed runs included)."""
        return time.perf_counter() - self.t0

    def add(self, rec: RoundRecord) -> None:
        """Count a finished round."""
        self.round = rec.round
        self.window.add(rec)
        self.total.add(rec)

    def metrics_row(self, r: int, metrics: dict[str, float], lr: float) -> dict[str, Any]:
        """The metrics.csv row of an evaluated round; starts a new detection window."""
        self.last = metrics
        self.best = max(self.best, metrics["test_accuracy"])
        row = {
            "round": r,
            **{k: _fmt(v) for k, v in metrics.items()},
            **self.window.rates(),
            "lr": _fmt(lr),
            "seconds": round(self.elapsed(), 3),
        }
        self.rows.append(row)
        self.window = Window()
        return row

    def saved(self) -> dict[str, Any]:
        """What a checkpoint keeps of the loop's state."""
        return {
            "round": self.round,
            "best": self.best,
            "seconds": self.elapsed(),
            "total": asdict(self.total),
            "window": asdict(self.window),
        }
