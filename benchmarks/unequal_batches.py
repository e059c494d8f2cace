"""Per-client gradients with very unequal batch sizes: one padded call, size groups, and the
dense models' unpadded (ragged) path.

With a Dirichlet(alpha) partition the clients' shards, hence their 10% mini-batches, differ by
up to 5x (MNIST, n = 23, alpha = 0.5, seed 0: 1,047 to 5,121 examples). One padded
``[n, max m]`` batch then computes about twice the real examples. Where that waste is large
(``engine.gradients.length_groups``), ``batched_grads`` computes a dense model (softmax, the
MLP) on the concatenated real examples with one weight-gradient matmul per client
(``dense_grads_ragged``); other models, or a set ``clients_per_chunk``, are grouped by batch
size (``length_buckets``) and each group padded to its own longest batch. This prints, for the
MNIST MLP and softmax at n = 23 (training mini-batch and the 1% guiding sample): real and
padded examples, the number of groups, ms per call of one padded call, of the size groups and
of ``batched_grads`` as it runs (median of alternating calls, so a drifting host skews all
alike), and the largest difference from the padded call ("groups" is "-" where
``batched_grads`` keeps one padded call); then ms per whole round (``Simulation.step``,
OracleSGD, the MLP) the three ways, alternating three simulations.

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


def time_alternating(fns: list[Callable[[], object]], reps: int) -> list[float]:
    """Median ms of zero-argument callables, called in turn after one warm-up each."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, acc in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e3 for t in times]


def make_sim(
    model: str, alpha: float, data: Dataset, aggregator: str = "mean", chunk: int = 0
) -> Simulation:
    """The benchmarked federation: MNIST, Dirichlet(alpha), n = 23, 10% batches, 1% samples
    (``chunk``: engine.clients_per_chunk, which keeps the size groups)."""
    cfg = make_config(
        {
            "seed": 0,
            "data": {"dataset": "mnist", "partition": "dirichlet", "alpha": alpha},
            "model": {"name": model},
            "clients": {"n": 23, "batch": 0.1, "sample": 0.01},
            "attack": {"name": "none"},
            "aggregator": {"name": aggregator},
            "engine": {"clients_per_chunk": chunk},
        }
    )
    return Simulation(cfg, dataset=data)


def round_times(alpha: float, data: Dataset, rounds: int) -> dict[str, float]:
    """Median ms per MLP round (OracleSGD) with one padded call, size groups and the ragged
    path: three simulations stepped alternately through the same rounds."""
    sims = {
        "one call": make_sim("mlp", alpha, data, "oracle"),
        "groups": make_sim("mlp", alpha, data, "oracle", chunk=23),
        "ragged": make_sim("mlp", alpha, data, "oracle"),
    }
    times: dict[str, list[float]] = {k: [] for k in sims}
    threshold = gradients.MIN_WASTED_WORK
    try:
        for r in range(1, rounds + 2):
            for way, sim in sims.items():
                gradients.MIN_WASTED_WORK = 1 << 62 if way == "one call" else threshold
                t0 = time.perf_counter()
                sim.step(r)
                if r > 1:  # round 1 warms up
                    times[way].append(time.perf_counter() - t0)
    finally:
        gradients.MIN_WASTED_WORK = threshold
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


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
        f"{'one call ms':>11} {'groups ms':>9} {'ragged ms':>9} {'as run':>6} {'max |diff|':>10}"
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
            grouped = partial(batched_grads, fm, theta, bx, by, bw, clients_per_chunk=n)
            as_run = partial(batched_grads, fm, theta, bx, by, bw)
            ref = one_call()
            diff = max(float((ref - f()).abs().max()) for f in (grouped, as_run))
            a, b, c = time_alternating([one_call, grouped, as_run], args.reps)
            way = "one" if groups is None else "ragged"
            print(
                f"{model:8} {label:8} {int(lengths.sum()):6d} {bw.numel():7d} "
                f"{len(groups) if groups else '-':>6} {a:11.2f} {b:9.2f} {c:9.2f} {way:>6} "
                f"{diff:10.2e}"
            )
    ms = round_times(args.alpha, data, args.reps)
    print(
        "MLP round (OracleSGD): "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items())
        + f"; ragged vs groups {ms['groups'] / ms['ragged']:.2f}x, "
        f"vs one call {ms['one call'] / ms['ragged']:.2f}x"
    )


if __name__ == "__main__":
    main()
