"""The paper's CIFAR-10 VGG11-GroupNorm setting on a GPU: rounds per second and test accuracy
reached, for OracleSGD and DiverseFL (s = 1%), under no attack and sign flip.

Run on a machine with a CUDA GPU and CIFAR-10 in ``$DIVERSEFL_DATA/cifar10``::

    python benchmarks/cifar_gpu.py --rounds 200            # 4 runs, prints a table
    python benchmarks/cifar_gpu.py --rounds 2400 --out runs/cifar-gpu   # the full schedule

Without CIFAR-10 it times the same model and federation on CIFAR-shaped random tensors
(``--synthetic``; rounds/s only, accuracy is meaningless). ``--device cpu --tiny`` is a smoke
run (3 clients, 2 rounds) for machines without a GPU. The settings are
``configs/paper/cifar10-vgg11.toml`` (23 clients, class-sorted shards, batch 10% of the shard,
warm-up 0.05 -> 0.1, clients chunked 6 at a time to bound activation memory).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from diversefl.config import load_config
from diversefl.data.datasets import DataError, Dataset, load_dataset
from diversefl.engine.runner import train
from diversefl.engine.simulator import Simulation
from diversefl.experiments.reproduce import PRESETS

CELLS = [
    ("oracle", "none"),
    ("diversefl", "none"),
    ("oracle", "sign_flip"),
    ("diversefl", "sign_flip"),
]


def synthetic_cifar(n_train: int = 50_000, n_test: int = 10_000, seed: int = 0) -> Dataset:
    """CIFAR-10-shaped random tensors (timing does not depend on pixel values)."""
    g = torch.Generator().manual_seed(seed)
    return Dataset(
        name="cifar10",
        x_train=torch.randn(n_train, 3, 32, 32, generator=g),
        y_train=torch.randint(0, 10, (n_train,), generator=g),
        x_test=torch.randn(n_test, 3, 32, 32, generator=g),
        y_test=torch.randint(0, 10, (n_test,), generator=g),
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the four cells and print rounds/s, peak GPU memory and final accuracy."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--device", default="cuda")
    p.add_argument("--data-dir")
    p.add_argument("--synthetic", action="store_true", help="CIFAR-shaped random data")
    p.add_argument("--tiny", action="store_true", help="3 clients, 2 rounds, small data")
    p.add_argument("--chunk", type=int, default=6, help="clients per batched gradient call")
    p.add_argument("--out", help="write each run directory under this folder")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or --device cpu --tiny")
    rounds = 2 if args.tiny else args.rounds
    overrides = [
        f"rounds={rounds}",
        f'engine.device="{args.device}"',
        f"engine.clients_per_chunk={args.chunk}",
        f"eval.every={max(1, rounds // 4)}",
        f"eval.checkpoint_every={rounds}",
    ]
    if args.tiny:
        overrides += ["clients.n=3", "attack.f=1", "clients.batch=8", "clients.sample=4"]
    data = None
    if args.synthetic or args.tiny:
        data = synthetic_cifar(600, 200) if args.tiny else synthetic_cifar()
        source = "synthetic CIFAR-shaped tensors"
    else:
        try:
            data = load_dataset("cifar10", args.data_dir)
            source = "CIFAR-10"
        except DataError as err:
            raise SystemExit(f"{err}\n(or pass --synthetic to time on random tensors)") from None
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"VGG11-GN, {source}, {rounds} rounds, device {name}")
    print(f"{'aggregator':<10} {'attack':<10} {'rounds/s':>9} {'peak GiB':>9} {'final acc':>9}")
    for agg, atk in CELLS:
        cfg = load_config(
            PRESETS / "cifar10-vgg11.toml",
            [*overrides, f'aggregator.name="{agg}"', f'attack.name="{atk}"'],
        )
        sim = Simulation(cfg, dataset=data)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            torch.cuda.synchronize(dev)
        out = Path(args.out) / f"{agg}__{atk}" if args.out else None
        t0 = time.perf_counter()
        res = train(cfg, out, progress=False, sim=sim)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        secs = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else 0.0
        print(f"{agg:<10} {atk:<10} {rounds / secs:>9.2f} {peak:>9.1f} {res.final_accuracy:>9.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
