"""Seconds per round of one federation through three engines, side by side:

* ``inprocess``  - diversefl's batched simulator (``Simulation.step``),
* ``simulation`` - Flower's simulation runtime (a SuperLink with ``--simulation``, Ray),
* ``deployment`` - a localhost deployment: a SuperLink and one SuperNode per client.

A round is timed from sending the model to the server step (central evaluation excluded), the
same span in all three. Default: the paper's 23-client MNIST MLP (configs/paper/mnist-mlp.toml)
for 3 rounds::

    python benchmarks/flower_round_time.py --data-dir ../shared/data
    python benchmarks/flower_round_time.py --modes inprocess,simulation --rounds 5

Needs the ``flower`` extra (``pip install -e ".[flower]"``) for the two Flower engines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODES = ("inprocess", "simulation", "deployment")


def _default_data_dir() -> str | None:
    env = os.environ.get("DIVERSEFL_DATA")
    if env:
        return env
    sibling = REPO.parent / "shared" / "data"
    return str(sibling) if sibling.exists() else None


def time_inprocess(config: str, overrides: list[str], data_dir: str | None) -> dict[str, Any]:
    """Per-round seconds of ``Simulation.step`` (the engine behind ``diversefl run``)."""
    from diversefl.config import load_config
    from diversefl.engine.simulator import Simulation

    t0 = time.perf_counter()
    cfg = load_config(config, overrides)
    sim = Simulation(cfg, data_dir=data_dir)
    setup = time.perf_counter() - t0
    rounds = []
    for r in range(1, cfg.rounds + 1):
        t = time.perf_counter()
        sim.step(r)
        rounds.append(time.perf_counter() - t)
    acc = sim.evaluate()["test_accuracy"]
    return {"round_seconds": rounds, "setup_seconds": setup, "final_test_accuracy": acc}


def time_flower(
    runtime: str,
    config: str,
    overrides: list[str],
    data_dir: str | None,
    nodes: int,
    max_inflight: int | None = None,
) -> dict[str, Any]:
    """Per-round seconds measured by the ServerApp, plus the launcher's total wall time."""
    import shutil

    from diversefl.flower.deploy import deploy_local

    tmp = Path(tempfile.mkdtemp(prefix="dfl-bench-"))
    res = deploy_local(  # on failure the DeployError names tmp/work/logs (kept)
        config,
        nodes,
        tmp / "out",
        data_dir=data_dir,
        overrides=overrides,
        runtime=runtime,
        workdir=tmp / "work",
        timeout=3000,
        max_inflight=max_inflight,
    )
    shutil.rmtree(tmp, ignore_errors=True)
    fl = res.summary["flower"]
    return {
        "round_seconds": fl["round_seconds"],
        "setup_seconds": res.seconds - sum(fl["round_seconds"]),
        "final_test_accuracy": res.summary["final_test_accuracy"],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the chosen engines and print the per-round times side by side."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "paper" / "mnist-mlp.toml"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data-dir", default=_default_data_dir())
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ",".join(MODES))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument(
        "--max-inflight",
        type=int,
        default=None,
        help="deployment: messages outstanding at once (default: deploy_local's)",
    )
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        p.error(f"unknown modes {unknown}; allowed: {', '.join(MODES)}")

    from diversefl.config import load_config

    overrides = [*args.set, f"rounds={args.rounds}", f"eval.every={args.rounds}"]
    cfg = load_config(args.config, overrides)
    results: dict[str, Any] = {}
    for mode in modes:
        print(f"[{mode}] {cfg.clients.n} clients, {args.rounds} rounds ...", flush=True)
        if mode == "inprocess":
            results[mode] = time_inprocess(args.config, overrides, args.data_dir)
        else:
            results[mode] = time_flower(
                mode, args.config, overrides, args.data_dir, cfg.clients.n, args.max_inflight
            )

    print()
    print(f"{cfg.name or Path(args.config).stem}: {cfg.clients.n} clients, model {cfg.model.name}")
    print(f"{'engine':<12}{'s/round':>10}{'median':>10}{'first':>10}{'setup s':>10}{'acc':>8}")
    for mode, res in results.items():
        secs = res["round_seconds"]
        print(
            f"{mode:<12}{statistics.fmean(secs):>10.3f}{statistics.median(secs):>10.3f}"
            f"{secs[0]:>10.3f}{res['setup_seconds']:>10.1f}{res['final_test_accuracy']:>8.4f}"
        )
    info = {
        "config": args.config,
        "overrides": overrides,
        "clients": cfg.clients.n,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "results": results,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
