"""Wall time of ``diversefl reproduce all --jobs 2``: every MNIST figure of the paper (Figs. 2,
3/9, 4/10 and 7; 69 runs) in one pool of workers, into a fresh output directory, and each
figure's share of the work in cell-seconds (the wall seconds of the runs it shows).

By default the runs are cut to ``--rounds 20`` (a check that the whole command works, a few
minutes); ``--full`` runs the paper's 1,000 rounds (about 30 minutes or more on a 2-core CPU)
and reports it against the 30-minute target. Measure on an idle machine: the runs share its
cores with anything else running.

Run: ``DIVERSEFL_DATA=/work/shared/data python benchmarks/reproduce_all.py`` (``--full`` for the
real figure, ``--jobs N``, ``--out DIR`` to keep the runs and figures).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import torch

from diversefl.engine.runner import cpu_model
from diversefl.experiments.reproduce_all import reproduce_all
from diversefl.experiments.sweep import format_duration

TARGET_SECONDS = 30 * 60  # the paper's MNIST reproduction on a 2-core CPU (issue #34)
QUICK_ROUNDS = 20


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the paper's 1,000 rounds (~30+ min)")
    ap.add_argument("--rounds", type=int, default=QUICK_ROUNDS, help="rounds without --full")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    ap.add_argument("--out", help="keep the runs and figures here (default: a temporary dir)")
    ap.add_argument("--data-dir", help="MNIST directory (default: $DIVERSEFL_DATA)")
    return ap.parse_args()


def main() -> None:
    """Run ``reproduce all`` once into an empty directory and print what it took."""
    args = _parse()
    rounds = None if args.full else args.rounds
    with tempfile.TemporaryDirectory(prefix="reproduce-all-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        command = f"diversefl reproduce all --jobs {args.jobs}" + (
            "" if rounds is None else f" --rounds {rounds}"
        )
        print(f"# {command} --out {out}")
        print(
            f"# {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
        )
        result = reproduce_all(out, args.data_dir, rounds, progress=False, jobs=args.jobs)
    print(f"wall: {result.wall_seconds:.1f} s ({format_duration(result.wall_seconds)}), "
          f"{result.ran} runs, {result.cell_seconds:,.1f} cell-seconds")  # fmt: skip
    print("| figure | runs | cell-seconds | share |\n|---|---|---|---|")
    for name, share in result.shares.items():
        part = share.cell_seconds / result.cell_seconds if result.cell_seconds else 0.0
        print(f"| {name} | {share.runs} | {share.cell_seconds:,.1f} | {part:.0%} |")
    print(f"| all (each run once) | {result.runs} | {result.cell_seconds:,.1f} | |")
    if rounds is None:
        verdict = "PASS" if result.wall_seconds <= TARGET_SECONDS else "FAIL"
        print(f"{verdict}: {format_duration(result.wall_seconds)} against the 30 min target")


if __name__ == "__main__":
    main()
