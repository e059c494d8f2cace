"""Rounds per second with many softmax clients: 1,000 (DiverseFL, sign flip, 200 Byzantine)
and 10,000 (MNIST iid, same rule and attack), at one and two threads; prints the share of a
round spent in the clients' gradients (the floor of this formulation) and memory per client.

    DIVERSEFL_DATA=/path/to/data python benchmarks/many_clients.py
    python benchmarks/many_clients.py --clients 1000 --threads 2 --rounds 30

Each setting runs in a fresh process (so peak memory is its own). The machine must be
otherwise idle: the load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

PRESET = "paper/mnist-softmax"


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def measure(n: int, threads: int, rounds: int, partition: str, data_dir: str | None) -> dict:
    """One setting in this process: build, warm up 3 rounds, time ``rounds`` rounds, then
    time the gradient calls alone (clients' and guides') on the same rounds."""
    import torch

    from diversefl.config import load_config
    from diversefl.engine import simulator
    from diversefl.engine.allocator import retain_freed_memory
    from diversefl.engine.preflight import build_federation
    from diversefl.presets import preset_path

    retain_freed_memory()  # as `diversefl run` does
    torch.set_num_threads(threads)
    cfg = load_config(
        preset_path(PRESET),
        [
            f"clients.n={n}", f"attack.f={n // 5}", "attack.name=sign_flip",
            "aggregator.name=diversefl", f"data.partition={partition}",
            "clients.batch=300",  # the paper's m, capped at the shard (60 or 6 examples)
            "clients.sample=1" if n >= 5000 else "clients.sample=0.01",
        ],
    )  # fmt: skip
    rss0 = _rss_kib()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "batch larger than the shards": intended here
        sim = build_federation(cfg, data_dir)
    rss_data = _rss_kib()
    for r in range(1, 4):
        sim.step(r)
    spent = [0.0]
    real = simulator.batched_grads

    def timed(*args, **kwargs):
        t = time.perf_counter()
        out = real(*args, **kwargs)
        spent[0] += time.perf_counter() - t
        return out

    simulator.batched_grads = timed  # the simulator's own name for it
    t0 = time.perf_counter()
    for r in range(4, 4 + rounds):
        sim.step(r)
    wall = time.perf_counter() - t0
    simulator.batched_grads = real
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "n": n,
        "threads": threads,
        "rounds_per_s": rounds / wall,
        "ms_per_round": wall / rounds * 1e3,
        "grads_ms_per_round": spent[0] / rounds * 1e3,
        "peak_rss_mib": peak / 1024,
        "data_rss_mib": (rss_data - rss0) / 1024,
        "per_client_kib": (peak - rss_data) / n,
        "d": sim.n_params,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, action="append", help="default: 1000 and 10000")
    ap.add_argument("--threads", type=int, action="append", help="default: 1 and 2")
    ap.add_argument("--rounds", type=int, default=0, help="timed rounds (default 30 / 10)")
    ap.add_argument("--partition", default="iid")
    ap.add_argument("--data-dir", default=os.environ.get("DIVERSEFL_DATA"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        n, t = args.clients[0], args.threads[0]
        print(json.dumps(measure(n, t, args.rounds, args.partition, args.data_dir)))
        return
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    rows = []
    for n in args.clients or [1000, 10000]:
        for t in args.threads or [1, 2]:
            rounds = args.rounds or (30 if n < 5000 else 10)
            cmd = [sys.executable, __file__, "--child", "--clients", str(n), "--threads",
                   str(t), "--rounds", str(rounds), "--partition", args.partition]  # fmt: skip
            if args.data_dir:
                cmd += ["--data-dir", args.data_dir]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            r = rows[-1]
            print(
                f"n={r['n']:>6} threads={t}: {r['rounds_per_s']:6.1f} rounds/s "
                f"({r['ms_per_round']:6.1f} ms; gradients {r['grads_ms_per_round']:6.1f} ms, "
                f"{r['grads_ms_per_round'] / r['ms_per_round']:.0%}); peak RSS "
                f"{r['peak_rss_mib']:.0f} MiB, data {r['data_rss_mib']:.0f} MiB, "
                f"{r['per_client_kib']:.1f} KiB per client beyond the data (d = {r['d']})",
                flush=True,
            )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
