"""The progress bar of a run: a rich bar on a terminal, a plain line now and then elsewhere."""

from __future__ import annotations

import time
from typing import Any


class ProgressBar:
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

    def __enter__(self) -> ProgressBar:
        if self.enabled and not self.plain:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
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
