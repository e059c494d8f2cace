"""Round throughput of the batched engine against a per-client loop, on CPU.

For each setting (the paper's softmax-MNIST and MLP-MNIST at n=23, softmax at n=230 and
n=1,000) this prints, in one table:

* ms per round of the batched engine: a full ``Simulation.step(r)`` (aggregator "mean",
  attack "none"), and ms of ``batched_grads`` alone on one round's batch;
* ms per round of a naive per-client loop: the same round with ``loop_grads`` (one
  ``nn.Module``, client by client) in place of ``batched_grads``, and its gradient part;
* achieved GFLOP/s of ``batched_grads`` and its share of this machine's fp32 matmul peak,
  measured in the same run: against the peak taken at the start, and (MLP, the target) as
  the median of interleaved peak/gradient pairs, which a drifting shared host cannot skew;
* memory per client, analytic and measured (peak-RSS delta of one ``batched_grads`` call);
* PASS/FAIL against the targets (reported, never asserted).

FLOPs counted (matmul FLOPs only, per *real* example; padding, bias adds, ReLU, softmax and
the loss are not counted): for every ``Linear(in, out)``, forward ``2*in*out``, weight
gradient ``2*in*out`` and input gradient ``2*in*out`` -- except the first layer's input
gradient, which nothing needs (the data are not differentiated).

Run: ``DIVERSEFL_DATA=/work/shared/data python benchmarks/round_throughput.py``
(``--quick`` for a smoke run, ``--profile`` to also print where one MLP round spends its time).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from diversefl.config import make_config
from diversefl.data.datasets import DATA_ENV_VAR, DataError, Dataset, load_dataset
from diversefl.engine.allocator import retain_freed_memory
from diversefl.engine.gradients import batched_grads, loop_grads
from diversefl.engine.simulator import Simulation

BYTES_F32 = 4
MLP_PEAK_TARGET = 0.75  # MLP batched gradients reach >= 75% of the measured matmul peak
SOFTMAX_SPEEDUP_TARGET = 5.0  # softmax batched round >= 5x faster than the loop round


@dataclass(frozen=True)
class Setting:
    """One benchmarked federation."""

    label: str
    model: str
    n: int
    batch: int | float  # int count (capped at the shard) or a fraction of the shard


SETTINGS: tuple[Setting, ...] = (
    Setting("softmax n=23", "softmax", 23, 300),
    Setting("mlp n=23", "mlp", 23, 0.1),
    Setting("softmax n=230", "softmax", 230, 300),
    Setting("softmax n=1000", "softmax", 1000, 300),
)


def setting_key(s: Setting) -> str:
    """The setting's name on the command line: "softmax-23", "mlp-23", ..."""
    return f"{s.model}-{s.n}"


@dataclass
class Result:
    """Everything measured for one setting."""

    setting: Setting
    d: int
    m: int  # largest per-client batch (the padded width)
    examples: int  # real examples per round, summed over clients
    step_ms: float
    grad_ms: float
    grad_vmap_ms: float  # the same gradients through torch.func (vmap) instead of the dense path
    gather_ms: float  # sim.batches: draw + gather (cached when batches are whole shards)
    server_ms: float  # aggregator (sanitize + mean) + the theta update, on [n, d] grads
    loop_round_ms: float
    loop_grad_ms: float
    loop_rounds: int
    gflop: float
    mem_analytic: int  # bytes per client: activations + one gradient row
    input_bytes: int  # bytes per client of the gathered input batch
    mem_measured: int | None  # bytes per client, or None when it could not be measured
    paired_share: float | None = None  # grads / peak, interleaved pairs (MLP only)
    paired_peak: float | None = None


# -- helpers ------------------------------------------------------------------------------
def median_ms(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in ms over ``reps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def linear_layers(module: nn.Module) -> list[nn.Linear]:
    """The model's Linear layers in forward order."""
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def grad_flops_per_example(module: nn.Module) -> int:
    """Matmul FLOPs one example needs for forward + backward (see the module docstring)."""
    total = 0
    for i, lin in enumerate(linear_layers(module)):
        mac = lin.in_features * lin.out_features
        total += 2 * mac + 2 * mac  # forward + weight gradient
        if i > 0:
            total += 2 * mac  # input gradient (not needed for the first layer)
    return total


def activation_floats_per_example(module: nn.Module) -> int:
    """Floats per example a reasonable implementation keeps for backward.

    Every Linear's output, every hidden ReLU's output (the next Linear's input) and the
    log-softmax of the logits. The input row itself is not counted (see ``input_bytes``).
    """
    lins = linear_layers(module)
    hidden = sum(lin.out_features for lin in lins[:-1])  # each followed by a ReLU here
    return sum(lin.out_features for lin in lins) + hidden + lins[-1].out_features


def _proc_kb(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def peak_rss_delta(fn: Callable[[], object]) -> int | None:
    """Bytes the process's peak RSS rises above its current RSS while ``fn()`` runs.

    Linux only: trims glibc's free heap (``malloc_trim``), resets the high-water mark through
    ``/proc/self/clear_refs`` (value 5) and reads ``VmHWM``; None where that is not possible.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so RSS is honest
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    before = _proc_kb("VmRSS")
    fn()
    after = _proc_kb("VmHWM")
    if before is None or after is None:
        return None
    return max(0, after - before) * 1024


def synthetic_mnist(seed: int = 0) -> Dataset:
    """MNIST-shaped random data (timing does not depend on pixel values)."""
    g = torch.Generator().manual_seed(seed)
    return Dataset(
        name="mnist",
        x_train=torch.randn(60_000, 1, 28, 28, generator=g),
        y_train=torch.randint(0, 10, (60_000,), generator=g),
        x_test=torch.randn(10_000, 1, 28, 28, generator=g),
        y_test=torch.randint(0, 10, (10_000,), generator=g),
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
    )


def get_data(data_dir: str | None) -> tuple[Dataset, str]:
    """MNIST from ``data_dir`` (or $DIVERSEFL_DATA), else synthetic tensors of its shape."""
    try:
        return load_dataset("mnist", data_dir), f"MNIST from {data_dir or os.environ[DATA_ENV_VAR]}"
    except (DataError, KeyError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        note = f"synthetic MNIST-shaped random tensors (no MNIST: {first})"
        return synthetic_mnist(), note


def load_note() -> str:
    """The 1-minute load average, with a warning when other work competes for the CPU."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return "unknown"
    busy = load > 0.5 * (os.cpu_count() or 1)
    warn = "  WARNING: other processes use the CPU; times are inflated" if busy else ""
    return f"{load:.2f} on {os.cpu_count()} cpus{warn}"


# -- matmul peak --------------------------------------------------------------------------
Shape = tuple[str, tuple[int, ...], tuple[int, ...]]


def matmul_ops(shapes: list[Shape]) -> list[tuple[str, Callable[[], object], int]]:
    """For each fp32 shape: (name, a call of torch.mm / torch.bmm on random inputs, its FLOPs)."""
    g = torch.Generator().manual_seed(0)
    ops = []
    for name, sa, sb in shapes:
        a, b = torch.randn(*sa, generator=g), torch.randn(*sb, generator=g)
        op = torch.bmm if a.dim() == 3 else torch.mm
        ops.append((name, lambda op=op, a=a, b=b: op(a, b), 2 * a.numel() * b.shape[-1]))
    return ops


def matmul_peak(shapes: list[Shape], reps: int) -> list:
    """GFLOP/s (median of ``reps``) of torch.mm / torch.bmm on each fp32 shape."""
    return [
        (name, flop / (median_ms(fn, reps, warmup=2) * 1e-3) / 1e9)
        for name, fn, flop in matmul_ops(shapes)
    ]


def paired_peak_share(
    grad_fn: Callable[[], object], gflop: float, shapes: list[Shape], reps: int
) -> tuple[float, float]:
    """Share of the matmul peak that ``grad_fn`` reaches, measured in interleaved pairs.

    This host's matmul speed drifts by 20-40% within a minute (other tenants), so a peak
    taken at the start of the run and a gradient timing taken later can disagree by that
    much. Here each of ``reps`` pairs times the peak shapes and ``grad_fn`` back to back,
    and the share is the median of the per-pair ratios. Returns (median share, median peak).
    """
    ops = matmul_ops(shapes)
    shares, peaks = [], []
    for _ in range(reps):
        peak = max(flop / (median_ms(fn, 2, warmup=1) * 1e-3) / 1e9 for _, fn, flop in ops)
        achieved = gflop / (median_ms(grad_fn, 2, warmup=1) * 1e-3)
        shares.append(achieved / peak)
        peaks.append(peak)
    return statistics.median(shares), statistics.median(peaks)


# -- one setting --------------------------------------------------------------------------
def loop_round(sim: Simulation, r: int) -> tuple[float, float]:
    """Round r with ``loop_grads`` in place of ``batched_grads``: (round ms, gradient ms)."""
    t0 = time.perf_counter()
    byz = sim.byzantine_mask(r)
    ctx = sim.context(r, byz)
    x, y, w = sim.batches(r, writable=False)
    t1 = time.perf_counter()
    grads = loop_grads(sim.fm, sim.theta, x, y, w)
    t2 = time.perf_counter()
    grads = sim.aggregator.prepare(grads, ctx)
    agg = sim.aggregator(grads, ctx)
    lr = sim.schedule(r)
    sim.theta = sim.theta - lr * (agg.update + sim.cfg.optim.weight_decay * sim.theta)
    t3 = time.perf_counter()
    return (t3 - t0) * 1e3, (t2 - t1) * 1e3


def make_sim(s: Setting, data: Dataset) -> Simulation:
    """A Simulation for setting ``s`` (sorted shards, mean aggregator, no attack)."""
    cfg = make_config(
        {
            "seed": 0,
            "data": {"dataset": "mnist", "partition": "sorted"},
            "model": {"name": s.model},
            "clients": {"n": s.n, "batch": s.batch},
            "attack": {"name": "none"},
            "aggregator": {"name": "mean"},
        }
    )
    return Simulation(cfg, dataset=data)


def run_setting(
    s: Setting, data: Dataset, rounds: int, warmup: int, loop_rounds: int, shapes: list[Shape]
) -> Result:
    """Measure one setting (the MLP's share of peak also in interleaved pairs, see
    :func:`paired_peak_share`)."""
    sim = make_sim(s, data)
    module = sim.fm.module
    examples = int(sim.batch_k.sum())

    # Batched engine: full rounds.
    r = 0
    for _ in range(warmup):
        r += 1
        sim.step(r)
    step_times = []
    for _ in range(rounds):
        r += 1
        t0 = time.perf_counter()
        sim.step(r)
        step_times.append(time.perf_counter() - t0)
    step_ms = statistics.median(step_times) * 1e3

    # Batched gradients alone, on one round's batch.
    idx, w = sim.draw_batches(r + 1)
    x, y = sim.x_train[idx], sim.y_train[idx]
    theta = sim.theta
    grad_ms = median_ms(lambda: batched_grads(sim.fm, theta, x, y, w), rounds, warmup)
    measured = peak_rss_delta(lambda: batched_grads(sim.fm, theta, x, y, w))
    grad_vmap_ms = median_ms(
        lambda: batched_grads(sim.fm, theta, x, y, w, method="vmap"), rounds, warmup
    )

    # The rest of a batched round, piece by piece.
    def gather() -> None:
        sim.batches(r + 1, writable=False)

    grads = batched_grads(sim.fm, theta, x, y, w)
    ctx = sim.context(r + 1, sim.byzantine_mask(r + 1))
    wd = sim.cfg.optim.weight_decay

    def server() -> None:
        agg = sim.aggregator(sim.aggregator.prepare(grads, ctx), ctx)
        theta - sim.schedule(r + 1) * (agg.update + wd * theta)

    gather_ms = median_ms(gather, rounds, warmup)
    server_ms = median_ms(server, rounds, warmup)

    # Per-client loop: the same round with loop_grads.
    loop_round(sim, r + 1)  # warm-up
    loop = [loop_round(sim, r + 2 + i) for i in range(loop_rounds)]

    gflop = grad_flops_per_example(module) * examples / 1e9
    paired = (None, None)
    if s.model == "mlp":
        paired = paired_peak_share(
            lambda: batched_grads(sim.fm, theta, x, y, w), gflop, shapes, max(3, rounds // 2)
        )

    act = activation_floats_per_example(module) * int(idx.shape[1])
    return Result(
        setting=s,
        d=sim.fm.dim,
        m=int(idx.shape[1]),
        examples=examples,
        step_ms=step_ms,
        grad_ms=grad_ms,
        grad_vmap_ms=grad_vmap_ms,
        gather_ms=gather_ms,
        server_ms=server_ms,
        loop_round_ms=statistics.median(t for t, _ in loop),
        loop_grad_ms=statistics.median(g for _, g in loop),
        loop_rounds=loop_rounds,
        gflop=gflop,
        mem_analytic=(act + sim.fm.dim) * BYTES_F32,
        input_bytes=int(x[0].numel()) * BYTES_F32,
        mem_measured=None if measured is None else measured // s.n,
        paired_share=paired[0],
        paired_peak=paired[1],
    )


# -- output -------------------------------------------------------------------------------
def fmt_bytes(b: int | None) -> str:
    """Human-readable bytes (MiB / KiB)."""
    if b is None:
        return "n/a"
    return f"{b / 2**20:.2f} MiB" if b >= 2**20 else f"{b / 2**10:.0f} KiB"


def render(rows: list[list[str]]) -> str:
    """Plain aligned table: first column left-aligned, the rest right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        rest = [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        cells = [row[0].ljust(widths[0]), *rest]
        lines.append("  ".join(cells))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table(results: list[Result], peak: float) -> str:
    """One table: metrics as rows, settings as columns, targets as PASS/FAIL rows."""

    def row(name: str, fn: Callable[[Result], str]) -> list[str]:
        return [name] + [fn(res) for res in results]

    def mlp_only(fn: Callable[[Result], str]) -> Callable[[Result], str]:
        return lambda res: fn(res) if res.setting.model == "mlp" else "-"

    def softmax_only(fn: Callable[[Result], str]) -> Callable[[Result], str]:
        return lambda res: fn(res) if res.setting.model == "softmax" else "-"

    def gflops(res: Result) -> float:
        return res.gflop / (res.grad_ms * 1e-3)

    def step_s(res: Result) -> float:
        return res.step_ms * 1e-3

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    rows = [
        row("metric", lambda res: res.setting.label),
        row("params d", lambda res: f"{res.d:,}"),
        row("batch m (max per client)", lambda res: str(res.m)),
        row("examples / round", lambda res: f"{res.examples:,}"),
        row("batched: ms / round (step)", lambda res: f"{res.step_ms:.2f}"),
        row("batched: ms grads only", lambda res: f"{res.grad_ms:.2f}"),
        row("batched: ms grads, vmap path", lambda res: f"{res.grad_vmap_ms:.2f}"),
        row("  of which draw + gather", lambda res: f"{res.gather_ms:.2f}"),
        row("  of which aggregate + update", lambda res: f"{res.server_ms:.2f}"),
        row("loop: ms / round", lambda res: f"{res.loop_round_ms:.2f}"),
        row("loop: ms grads only", lambda res: f"{res.loop_grad_ms:.2f}"),
        row("loop rounds timed", lambda res: str(res.loop_rounds)),
        row("speedup loop/batched (round)", lambda res: f"{res.loop_round_ms / res.step_ms:.1f}x"),
        row("speedup loop/batched (grads)", lambda res: f"{res.loop_grad_ms / res.grad_ms:.1f}x"),
        row("GFLOP / round (grads)", lambda res: f"{res.gflop:.3f}"),
        row("batched grads GFLOP/s", lambda res: f"{gflops(res):.1f}"),
        row("% of matmul peak (run's start)", lambda res: f"{100 * gflops(res) / peak:.0f}%"),
        row(
            "% of peak, interleaved pairs",
            mlp_only(lambda res: f"{100 * res.paired_share:.0f}% of {res.paired_peak:.0f}"),
        ),
        row("% of peak, whole step", lambda res: f"{100 * res.gflop / step_s(res) / peak:.0f}%"),
        row("mem/client input batch", lambda res: fmt_bytes(res.input_bytes)),
        row("mem/client analytic (act+grad)", lambda res: fmt_bytes(res.mem_analytic)),
        row("mem/client measured", lambda res: fmt_bytes(res.mem_measured)),
        row(
            f"TARGET mlp grads >= {MLP_PEAK_TARGET:.0%} peak",
            mlp_only(lambda res: verdict(res.paired_share >= MLP_PEAK_TARGET)),
        ),
        row(
            "TARGET mlp round <= loop round",
            mlp_only(lambda res: verdict(res.step_ms <= res.loop_round_ms)),
        ),
        row(
            f"TARGET softmax round >= {SOFTMAX_SPEEDUP_TARGET:.0f}x loop",
            softmax_only(
                lambda res: verdict(res.loop_round_ms >= SOFTMAX_SPEEDUP_TARGET * res.step_ms)
            ),
        ),
    ]
    return render(rows)


def profile_mlp_step(data: Dataset, top: int = 12) -> None:
    """Print the top ops (self CPU time) of one MLP n=23 Simulation.step."""
    from torch.profiler import ProfilerActivity, profile

    sim = make_sim(SETTINGS[1], data)
    for r in range(1, 4):
        sim.step(r)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sim.step(4)
    print("\nprofile of one mlp n=23 Simulation.step (top ops by self CPU time):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up rounds")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 rounds, 1 warm-up")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get(DATA_ENV_VAR),
        help=f"directory holding mnist/ (default ${DATA_ENV_VAR}); synthetic data if missing",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--profile", action="store_true", help="profile one MLP round too")
    parser.add_argument(
        "--only",
        action="append",
        choices=[setting_key(s) for s in SETTINGS],
        help="measure only this setting (repeatable; default: all four)",
    )
    args = parser.parse_args(argv)
    settings = [s for s in SETTINGS if args.only is None or setting_key(s) in args.only]
    rounds, warmup = (3, 1) if args.quick else (max(1, args.rounds), max(1, args.warmup))

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    retained = retain_freed_memory()  # as diversefl.run does (DIVERSEFL_RETAIN_MEMORY=0: off)
    t_start = time.perf_counter()
    data, note = get_data(args.data_dir)
    print(f"data: {note}")
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()} "
        f"({'--threads' if args.threads > 0 else 'torch default'}), "
        f"{platform.processor() or platform.machine()}, cpus {os.cpu_count()}"
    )
    print(f"timed rounds {rounds} (warm-up {warmup}); all times are medians")
    print(f"freed memory kept for reuse (engine/allocator.py): {retained}")
    print(f"load average at start: {load_note()}\n")

    mlp23 = 23 * 261  # examples in one MLP n=23 round (the engine's biggest matmuls)
    shapes = [
        ("mm 2048x2048 @ 2048x2048", (2048, 2048), (2048, 2048)),
        (f"mm {mlp23}x784 @ 784x200 (mlp fwd)", (mlp23, 784), (784, 200)),
        ("bmm 23x[200x261 @ 261x784] (mlp wgrad)", (23, 200, 261), (23, 261, 784)),
    ]
    peaks = matmul_peak(shapes, reps=3 if args.quick else 10)
    peak = max(g for _, g in peaks)
    print("fp32 matmul peak (median GFLOP/s):")
    for name, g in peaks:
        print(f"  {name:<42} {g:8.1f}")
    print(f"  peak used below: {peak:.1f} GFLOP/s\n")

    results = []
    for s in settings:
        loop_n = rounds if s.n <= 23 else max(2, rounds // (2 if s.n <= 230 else 10))
        results.append(run_setting(s, data, rounds, warmup, loop_n, shapes))
    print(table(results, peak))
    print(
        "\nFLOPs: matmul only, per real example: fwd 2*in*out + weight-grad 2*in*out per Linear,"
        "\n  + input-grad 2*in*out for every Linear but the first."
        "\nmem/client analytic: fp32 Linear/ReLU outputs + log-softmax per example times m,"
        "\n  plus one gradient row of d floats (the input batch, m*in floats, is listed apart)."
        "\nmem/client measured: peak-RSS rise (/proc VmHWM) during one batched_grads call / n"
        "\n  (the gathered batch x already exists, so it is not included)."
    )
    if args.profile:
        profile_mlp_step(data)
    print(f"\nload average at end: {load_note()}")
    print(f"total benchmark time {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
