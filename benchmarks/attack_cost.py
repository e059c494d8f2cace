"""What each attack costs per round at the MNIST MLP's size, next to the round's gradients.

An attack runs once per round on the honest updates (``[n - f, d]``): for the leaderboard's
MLP (n = 23, f = 5, d = 199,210) that is an ``[18, 199,210]`` float32 block. Several attacks
need its coordinate-wise std or pairwise distances in float64, the adaptive attack a float64
rotation of the Byzantine clients' guiding gradients, so some cost a sizeable share of a
round. This prints the median ms per call of every registered attack that works on updates
(the data attacks, label flip and backdoor, cost nothing here), of ``coordinate_std`` next to
``torch.std`` (the same bits), and of one MLP round's per-client gradients for scale
(``batched_grads`` on 23 mini-batches of 261 MNIST-shaped examples, random pixels), and of
the same call with the 5 Byzantine clients' gradients skipped, as the simulator does for the
attacks that never read them (``uses_own_gradients = False``).
Calls alternate across the attacks, so a drifting host skews them alike. Like ``diversefl run``
and ``sweep``, the process keeps freed memory (``engine/allocator.py``).

Run: ``python benchmarks/attack_cost.py [--reps N] [--threads T]`` (about a minute; needs no
data files).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from diversefl import attacks
from diversefl.aggregators.base import RoundContext
from diversefl.attacks.statistics import coordinate_std
from diversefl.engine.allocator import retain_freed_memory
from diversefl.engine.gradients import batched_grads
from diversefl.engine.params import FlatModel
from diversefl.models import build_model

N, F, BATCH = 23, 5, 261
SKIPPED = {"none", "label_flip", "backdoor"}  # act on data or not at all: nothing to time


def mlp_round(
    byzantine: Tensor,
) -> tuple[Callable[[], Tensor], Callable[[], Tensor], Tensor, Tensor]:
    """One MLP round's gradient call (for scale), the same call skipping the ``byzantine``
    clients, and honest / guiding updates of its size."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = FlatModel(build_model("mlp", (1, 28, 28), 10))
    theta = model.flatten()
    x = torch.rand(N, BATCH, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (N, BATCH), generator=gen)
    grads = batched_grads(model, theta, x, y)
    skipping = lambda: batched_grads(model, theta, x, y, compute=~byzantine)  # noqa: E731
    return (lambda: batched_grads(model, theta, x, y)), skipping, grads, grads * 0.9 + 1e-4


def time_alternating(calls: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median ms per call of each entry, calling them in turn ``reps`` times after a warm-up."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(reps):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9, help="timed calls of each (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (sweeps use 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()  # as `diversefl run` and `sweep` do: freed blocks are reused

    byzantine = torch.zeros(N, dtype=torch.bool)
    byzantine[[1, 6, 11, 16, 21]] = True  # spread out, as a seeded draw leaves them
    gradient_call, skipping_call, grads, guiding = mlp_round(byzantine)
    honest, byz = grads[~byzantine].contiguous(), grads[byzantine].contiguous()

    def attack_call(name: str) -> Callable[[], object]:
        attack = attacks.get(name)
        ctx = RoundContext(
            round=1,
            n=N,
            f=F,
            generator=torch.Generator().manual_seed(1),
            byzantine=byzantine,
            guiding_fn=lambda: guiding,
        )
        _ = ctx.guiding  # computed once, as the engine does before the attack runs
        return lambda: attack(honest, byz, ctx)

    calls: dict[str, Callable[[], object]] = {"gradients (scale)": gradient_call}
    calls["gradients, Byz. skipped"] = skipping_call
    calls |= {name: attack_call(name) for name in attacks.REGISTRY if name not in SKIPPED}
    calls["coordinate_std"] = lambda: coordinate_std(honest)
    calls["torch.std (reference)"] = lambda: torch.std(honest, dim=0, correction=0)
    ms = time_alternating(calls, args.reps)

    print(
        f"honest updates [{N - F}, {honest.shape[1]:,}] float32, {args.threads} thread(s), "
        f"median of {args.reps}"
    )
    base = ms["gradients (scale)"]
    print(f"{'call':<24}{'ms':>9}{'x gradients':>13}")
    for name, value in ms.items():
        print(f"{name:<24}{value:>9.1f}{value / base:>13.2f}")
    print(
        f"coordinate_std vs torch.std: {ms['torch.std (reference)'] / ms['coordinate_std']:.2f}x"
        " (equal bits)"
    )


if __name__ == "__main__":
    main()
