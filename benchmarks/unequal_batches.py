"""Per-client gradients with very unequal batch sizes: one padded call against size buckets.

With a Dirichlet(alpha) partition the clients' shards, hence their 10% mini-batches, differ by
up to 5x (MNIST, n = 23, alpha = 0.5, seed 0: 1,047 to 5,121 examples). One padded
``[n, max m]`` batch then computes about twice the real examples; ``batched_grads`` groups the
clients by batch size (``engine.gradients.length_buckets``) so that each group is padded only
to its own longest batch. This prints, for the MNIST MLP and softmax at n = 23 (training
mini-batch and the 1% guiding sample): real and padded examples, the number of groups, and
ms per call of both (median of alternating calls, so a drifting host skews both alike), and
the largest difference between their results ("groups" is "-" where ``batched_grads`` keeps
one padded call); then ms per whole round (``Simulation.step``,
OracleSGD, the MLP) with the grouping on and off, alternating two simulations.

Run: ``DIVERSEFL_DATA=/work/shared/data python benchmarks/unequal_batches.py [--reps N]
[--threads T] [--alpha A]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from diversefl.config import make_config
from diversefl.data.datasets import Dataset, load_dataset
from diversefl.engine import gradients
from diversefl.engine.allocator import retain_freed_memory
from diversefl.engine.gradients import batched_grads, length_groups, padded_grads
from diversefl.engine.simulator import Simulation


def time_pair(
    one: Callable[[], object], other: Callable[[], object], reps: int
) -> tuple[float, float]:
    """Median ms of two zero-argument callables, called alternately after one warm-up each."""
    one(), other()
    a, b = [], []
    for _ in range(reps):
        for fn, acc in ((one, a), (other, b)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return statistics.median(a) * 1e3, statistics.median(b) * 1e3


def make_sim(model: str, alpha: float, data: Dataset, aggregator: str = "mean") -> Simulation:
    """The benchmarked federation: MNIST, Dirichlet(alpha), n = 23, 10% batches, 1% samples."""
    cfg = make_config(
        {
            "seed": 0,
            "data": {"dataset": "mnist", "partition": "dirichlet", "alpha": alpha},
            "model": {"name": model},
            "clients": {"n": 23, "batch": 0.1, "sample": 0.01},
            "attack": {"name": "none"},
            "aggregator": {"name": aggregator},
        }
    )
    return Simulation(cfg, dataset=data)


def round_times(alpha: float, data: Dataset, rounds: int) -> tuple[float, float]:
    """Median ms per MLP round (OracleSGD) with the grouping on and off, two simulations
    stepped alternately through the same rounds."""
    sims = {on: make_sim("mlp", alpha, data, "oracle") for on in (True, False)}
    times: dict[bool, list[float]] = {True: [], False: []}
    threshold = gradients.MIN_WASTED_WORK
    try:
        for r in range(1, rounds + 2):
            for on, sim in sims.items():
                gradients.MIN_WASTED_WORK = threshold if on else 1 << 62
                t0 = time.perf_counter()
                sim.step(r)
                if r > 1:  # round 1 warms up
                    times[on].append(time.perf_counter() - t0)
    finally:
        gradients.MIN_WASTED_WORK = threshold
    return statistics.median(times[False]) * 1e3, statistics.median(times[True]) * 1e3


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--alpha", type=float, default=0.5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    retain_freed_memory()
    data = load_dataset("mnist")
    print(f"torch {torch.__version__}, {args.threads} thread(s), Dirichlet({args.alpha}), n = 23")
    print(
        f"{'model':8} {'batch':8} {'real':>6} {'padded':>7} {'groups':>6} "
        f"{'one call ms':>11} {'grouped ms':>10} {'speed-up':>8} {'max |diff|':>10}"
    )
    for model in ("mlp", "softmax"):
        sim = make_sim(model, args.alpha, data)
        theta = sim.theta
        x, y, w = sim.batches(1)
        gx, gy = sim.gather(sim.sample_idx)
        for label, (bx, by, bw) in (("train", (x, y, w)), ("guide", (gx, gy, sim.sample_w))):
            n = bx.shape[0]
            lengths = (bw != 0).sum(1)
            ones = torch.ones(n)

            fm = sim.fm
            groups = length_groups(bw, fm.dim)  # None: batched_grads makes one padded call
            one_call = partial(padded_grads, fm, theta, bx, by, bw, None, ones, "auto", True)
            grouped = partial(batched_grads, fm, theta, bx, by, bw)
            diff = float((one_call() - grouped()).abs().max())
            a, b = time_pair(one_call, grouped, args.reps)
            print(
                f"{model:8} {label:8} {int(lengths.sum()):6d} {bw.numel():7d} "
                f"{len(groups) if groups else '-':>6} {a:11.2f} {b:10.2f} {a / b:7.2f}x "
                f"{diff:10.2e}"
            )
    off, on = round_times(args.alpha, data, args.reps)
    print(f"MLP round (OracleSGD): one call {off:.1f} ms, grouped {on:.1f} ms, {off / on:.2f}x")


if __name__ == "__main__":
    main()
