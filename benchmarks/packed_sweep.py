"""Packed federations vs one run at a time: the paper's softmax grid (or part of it) with
`--pack` against the same cells alone, same process, one thread; prints seconds per cell and
the ratio, and the largest accuracy difference between the packed and the lone runs.

    DIVERSEFL_DATA=/path/to/data python benchmarks/packed_sweep.py --rounds 200 --attacks 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from diversefl.api import run
from diversefl.experiments.packing import plan_packs, run_pack
from diversefl.experiments.sweep import load_sweep
from diversefl.presets import preset_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper/mnist-softmax")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--attacks", type=int, default=2, help="first N attacks of the grid")
    ap.add_argument("--pack", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cells = load_sweep(preset_path(args.preset), [f"rounds={args.rounds}"])
    attacks = list(dict.fromkeys(c.attack for c in cells))[: args.attacks]
    cells = [c for c in cells if c.attack in attacks]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        packs = plan_packs(cells, root / "packed", args.pack, args.data_dir)
        for pack in packs:
            run_pack(pack, root / "packed", args.data_dir)
        packed_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for cell in cells:
            run(cell.config, data_dir=args.data_dir, out=root / "alone" / cell.dirname,
                progress=False)  # fmt: skip
        alone_s = time.perf_counter() - t0
        diffs = []
        for cell in cells:
            a = json.loads((root / "packed" / cell.dirname / "summary.json").read_text())
            b = json.loads((root / "alone" / cell.dirname / "summary.json").read_text())
            diffs.append(abs(a["final_test_accuracy"] - b["final_test_accuracy"]))
    n = len(cells)
    sizes = sorted((len(p.cells) for p in packs), reverse=True)
    print(f"{n} cells of {args.preset}, {args.rounds} rounds, {args.threads} thread(s); "
          f"packs of {sizes}")  # fmt: skip
    print(f"alone : {alone_s:7.1f} s  ({alone_s / n:.2f} s per cell)")
    print(f"packed: {packed_s:7.1f} s  ({packed_s / n:.2f} s per cell)")
    print(f"speed-up {alone_s / packed_s:.2f}x; largest |final accuracy difference| "
          f"{max(diffs):.4f} (median {sorted(diffs)[n // 2]:.4f})")  # fmt: skip


if __name__ == "__main__":
    main()
