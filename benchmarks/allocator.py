"""What keeping freed memory in the process (``diversefl.engine.allocator``) buys, on CPU.

For a few aggregator x attack cells of the MLP leaderboard (``configs/leaderboard/
mnist-mlp.toml``, n = 23, d = 199,210) this times ``Simulation.step`` in fresh processes,
once with glibc's default malloc thresholds (``DIVERSEFL_RETAIN_MEMORY=0``) and once with
the thresholds ``diversefl.run`` sets, alternating the two so that drift on a shared host
hits both alike, and prints ms per round and the ratio. Same arithmetic either way: only
where freed blocks go changes.

Run: ``DIVERSEFL_DATA=/path/to/data python benchmarks/allocator.py [--rounds 10] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "leaderboard" / "mnist-mlp.toml"
CELLS = [
    ("oracle", "none"),
    ("oracle", "alie"),
    ("oracle", "min_max"),
    ("bulyan", "none"),
    ("geomed", "none"),
    ("diversefl", "adaptive"),
]


def child(aggregator: str, attack: str, rounds: int, threads: int) -> None:
    """In a fresh process: build the cell, warm up, time ``rounds`` steps, print JSON."""
    import torch
    from round_throughput import get_data

    from diversefl.config import make_config
    from diversefl.engine.allocator import retain_freed_memory
    from diversefl.engine.simulator import Simulation

    applied = retain_freed_memory()  # a no-op (False) under DIVERSEFL_RETAIN_MEMORY=0
    if threads > 0:
        torch.set_num_threads(threads)
    raw = tomllib.loads(CONFIG.read_text())
    raw.pop("sweep")
    raw["aggregator"] = {"name": aggregator}
    raw["attack"]["name"] = attack
    data, _ = get_data(os.environ.get("DIVERSEFL_DATA"))
    sim = Simulation(make_config(raw), dataset=data)
    for r in range(1, 4):
        sim.step(r)
    times = []
    for r in range(4, 4 + rounds):
        t0 = time.perf_counter()
        sim.step(r)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"applied": applied, "ms": statistics.median(times) * 1e3}))


def measure(cell: tuple[str, str], retain: bool, rounds: int, threads: int) -> float:
    """Median ms per round of ``cell`` in a fresh process."""
    env = {**os.environ, "DIVERSEFL_RETAIN_MEMORY": "1" if retain else "0"}
    cmd = [sys.executable, __file__, "--child", *cell, "--rounds", str(rounds)]
    out = subprocess.run(
        [*cmd, "--threads", str(threads)], env=env, capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["applied"] != retain:
        raise SystemExit(f"allocator setting not as asked (retain={retain}): {result}")
    return result["ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per process")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument("--repeats", type=int, default=2, help="process pairs per cell")
    parser.add_argument(
        "--child", nargs=2, metavar=("AGGREGATOR", "ATTACK"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.rounds, args.threads)
        return
    print(
        f"MLP leaderboard cells, {args.rounds} timed rounds, threads {args.threads}, "
        f"{args.repeats} alternating process pairs per cell; load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'cell':<24} {'default ms':>11} {'retained ms':>12} {'speed-up':>9}")
    for cell in CELLS:
        base, kept = [], []
        for _ in range(args.repeats):
            base.append(measure(cell, False, args.rounds, args.threads))
            kept.append(measure(cell, True, args.rounds, args.threads))
        b, k = statistics.median(base), statistics.median(kept)
        print(f"{'/'.join(cell):<24} {b:11.1f} {k:12.1f} {b / k:8.2f}x", flush=True)
    print(f"load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
