"""Kill/resume trials: run a config as a real subprocess, SIGKILL it at a random moment,
resume it with ``--resume`` and compare ``metrics.csv`` and ``decisions.csv`` with an
uninterrupted run of the same config. Prints one line per trial and the count that matched.

Run: ``python benchmarks/kill_resume.py --trials 10`` (digits data, no download; each trial
takes a few seconds). ``--config FILE`` uses another config.
"""

from __future__ import annotations

import argparse
import csv
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w

import diversefl
from diversefl.config import load_config

DEFAULT = {
    "seed": 0,
    "rounds": 200,
    "data": {"dataset": "digits", "partition": "sorted"},
    "model": {"name": "mlp"},
    "clients": {"n": 6, "batch": 0.5, "sample": 8},
    "optim": {"lr": 0.1, "schedule": "constant", "weight_decay": 0.0},
    "attack": {"name": "sign_flip", "f": 1},
    "aggregator": {"name": "diversefl"},
    "eval": {"every": 5, "checkpoint_every": 10},
}


def _rows(path: Path, drop: str | None = "seconds") -> list[dict[str, str]]:
    with path.open() as fh:
        return [{k: v for k, v in r.items() if k != drop} for r in csv.DictReader(fh)]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "diversefl.cli", *args]


def _count_rows(path: Path) -> int:
    try:
        with path.open() as fh:
            return max(0, sum(1 for _ in fh) - 1)
    except FileNotFoundError:
        return 0


def trial(cfg_path: Path, ref: Path, out: Path, rng: random.Random) -> tuple[bool, str]:
    """One kill at a random point of the run (after a random number of flushed metric rows,
    plus a random delay), then resume; True when the resumed files equal the reference's."""
    total = len(_rows(ref / "metrics.csv"))
    target = rng.randint(1, max(1, total - 4))
    proc = subprocess.Popen(
        _cli("run", str(cfg_path), "--out", str(out), "--quiet"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while _count_rows(out / "metrics.csv") < target and time.time() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.05))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (out / "summary.json").exists():
        return False, "finished before the kill (raise rounds)"
    killed_at = _count_rows(out / "metrics.csv")
    done = subprocess.run(
        _cli("run", "--out", str(out), "--resume", "--quiet"), capture_output=True, text=True
    )
    if done.returncode != 0:
        return False, f"resume failed: {done.stdout[-300:]} {done.stderr[-300:]}"
    same = _rows(out / "metrics.csv") == _rows(ref / "metrics.csv")
    same &= (out / "decisions.csv").read_text() == (ref / "decisions.csv").read_text()
    return same, f"killed with {killed_at} of {total} metric rows written"


def main(argv: list[str] | None = None) -> int:
    """Run the trials and print how many matched."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--config", help="TOML config (default: a 200-round digits MLP run)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg_path = Path(args.config) if args.config else root / "cfg.toml"
        if not args.config:
            cfg_path.write_text(tomli_w.dumps(DEFAULT))
        ref = root / "ref"
        diversefl.run(load_config(cfg_path), out=ref, progress=False)
        matched = 0
        for k in range(args.trials):
            ok, what = trial(cfg_path, ref, root / f"trial{k}", rng)
            matched += ok
            print(f"trial {k + 1}: {'match' if ok else 'MISMATCH'} ({what})", flush=True)
    print(f"{matched}/{args.trials} kill/resume trials matched the uninterrupted run")
    return 0 if matched == args.trials else 1


if __name__ == "__main__":
    raise SystemExit(main())
