"""Milliseconds per call of every registered aggregator, and of Flower's and byzfl's versions.

Part 1 times every aggregator in :data:`diversefl.aggregators.REGISTRY` and the leaderboards'
pre-aggregator pipelines (:data:`PIPELINES`, e.g. ``nnm+krum``) and DiverseFL's bounds
(:data:`VARIANTS`, e.g. ``diversefl[bound=cone]``) (``agg(updates, ctx)``, so the
base class's row validation is included) at n in {23, 100} clients (f = 5 and f = 20)
and d in {7,850; 199,210; 9,231,114} (softmax-MNIST, MLP-MNIST and VGG11-CIFAR10 sizes). Each
cell is the median of several calls after one warm-up call; where one call takes long the
repeats shrink, and a call over 60 s is timed once (marked ``*``). A method that rejects the
federation (:class:`~diversefl.aggregators.AggregatorError`, e.g. Bulyan needs n >= 4f + 3)
prints ``n/a`` with the reason below the table; one that runs out of memory prints ``OOM``
(the process caps its own address space at what is free, so an allocation fails cleanly
instead of waking the kernel's OOM killer). The row ``floor: updates.sum(0)`` is one plain
read of the ``[n, d]`` updates: the memory-bandwidth floor of any rule that reads them.

Part 2, when ``flwr`` and/or ``byzfl`` import, times THEIR mean, coordinate median, trimmed
mean, Krum, Multi-Krum, Bulyan and geometric median (those each library has) on the same
updates in the same process and prints ``ratio = theirs / ours`` with a PASS/FAIL column for
the target "ours at least 5x faster" (reported, never asserted), and whether the results agree
(``torch.allclose`` with relative 1e-4 and absolute 1e-5 of ours' largest entry).

* Flower: the module-level functions of ``flwr.server.strategy.aggregate`` that its
  strategies (FedAvg, FedMedian, FedTrimmedAvg, Krum, Bulyan) call, on ``[([row_i], 1), ...]``
  (one flat numpy layer per client). The torch -> numpy conversion is a zero-copy view made
  before timing, so it is excluded; the copies Flower makes inside those functions are
  included. Flower's Krum and Bulyan cost ~n^2 (Bulyan ~theta * n^2) full-length vector
  differences; where one call would exceed 60 s the time is ESTIMATED from a measured
  per-pair cost (a lower bound for Bulyan) and marked ``~``.
* byzfl: its aggregator classes (``Average()``, ``Median()``, ``TrMean(f)``, ``Krum(f)``,
  ``MultiKrum(f)``, ``GeometricMedian()``; it has no Bulyan) on the stacked ``[n, d]`` torch
  tensor. ``import byzfl`` also imports its benchmark helpers, which need torchvision; when
  that fails (no CPU torchvision build matches torch 2.13 on PyPI) only the subpackage
  ``byzfl.aggregators`` (numpy, scipy, torch) is loaded.

``--threads 1 2`` runs everything once per torch thread count, in one process, on the same
updates (numpy, and so Flower, uses one core either way). Semantic differences found in their
source are printed as ``note:`` lines. Inputs are random normal rows (a random block of at
most 2^20 columns repeated along d, which keeps the set-up of the 3.7 GB case short).

Run: ``.venv/bin/python benchmarks/aggregators.py`` (full, ~10 min on an idle 2-core machine,
much longer on a busy one), ``--quick`` (d = 7,850 and 199,210 at n = 23, few repeats),
``--skip-huge`` (no d = 9,231,114), ``--n``/``--d``/``--methods`` (only these), ``--threads N
[N ...]`` (torch threads, default 1). The 5x comparison alone: ``--skip-huge --threads 1 2
--methods mean median trimmed_mean krum multi_krum bulyan geomed``. Install the other
libraries with ``pip install -e '.[bench]'`` (Flower) and ``pip install --no-deps
byzfl==0.0.11`` (its declared torch/torchvision requirements would otherwise pull other torch
builds; the aggregators need only numpy, scipy and torch).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import importlib.metadata
import importlib.util
import os
import resource
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diversefl import aggregators
from diversefl.aggregators import AggregatorError, RoundContext
from diversefl.methods import build_method

SIZES: dict[int, str] = {
    7_850: "softmax-MNIST",
    199_210: "MLP-MNIST",
    9_231_114: "VGG11-CIFAR10",
}
HUGE_D = 9_231_114
FEDERATIONS: tuple[tuple[int, int], ...] = ((23, 5), (100, 20))  # (n, f)
SPEEDUP_TARGET = 5.0  # ours at least 5x faster than each of theirs
SINGLE_CALL_CAP_S = 60.0  # a call longer than this is timed once (or, for theirs, estimated)
MEMORY_MARGIN = 3 << 30  # bytes left free for the rest of the machine under the address cap
RANDOM_BLOCK = 1 << 20  # columns of fresh random numbers; longer rows repeat the block
#: The leaderboards' pre-aggregator pipelines (``aggregator.pre`` + rule), timed after the rules.
PIPELINES: tuple[str, ...] = (
    "nnm+krum",
    "nnm+trimmed_mean",
    "bucketing+centered_clipping",
    "arc+median",
)
#: DiverseFL's bounds on accepted updates (docs/label-flip.md), timed after the pipelines.
VARIANTS: dict[str, dict[str, Any]] = {
    "diversefl[bound=cone]": {"bound": "cone", "cone_cos": 0.6},
    "diversefl[bound=orthogonal]": {"bound": "orthogonal"},
    "diversefl[bound=agreement]": {"bound": "agreement"},
}
COMPARED = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geomed")
CONTEXT_FIELDS = frozenset(f.name for f in dataclasses.fields(RoundContext))


@dataclass
class Timing:
    """One measurement: median ms over ``calls`` timed calls, or why there is none."""

    ms: float | None = None
    calls: int = 0
    estimated: bool = False  # ms is an estimate (theirs only), not a measured call
    lower_bound: bool = False  # the estimate leaves part of the work out
    problem: str = ""  # "n/a (...)", "OOM", "error: ..."
    output: Tensor | None = field(default=None, repr=False)

    def cell(self) -> str:
        """The table cell: ``12.3``, ``45,600*`` (one call), ``~250,000`` (estimate)."""
        if self.ms is None:
            return self.problem.split(" (")[0] if self.problem else "-"
        text = fmt_ms(self.ms)
        if self.estimated:
            return ("~>=" if self.lower_bound else "~") + text
        return text + ("*" if self.calls == 1 else "")


@dataclass(frozen=True)
class Plan:
    """How hard to measure: timed calls after the warm-up, and seconds allowed for them."""

    repeats: int
    budget_s: float


def fmt_ms(ms: float) -> str:
    """Milliseconds with about three significant digits and thousands separators."""
    if ms >= 100:
        return f"{ms:,.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed allocation (numpy MemoryError or torch's allocator)."""
    return isinstance(exc, MemoryError) or "can't allocate memory" in str(exc)


def as_tensor(value: Any) -> Tensor:
    """Their results (Flower: list of one numpy layer; byzfl: tensor) as a flat tensor."""
    if isinstance(value, list | tuple):
        value = np.concatenate([np.asarray(v).ravel() for v in value])
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value)).reshape(-1)
    return value.detach().reshape(-1)


def measure(call: Callable[[], Any], plan: Plan) -> Timing:
    """Time ``call``: one warm-up call, then up to ``plan.repeats`` calls within the budget.

    The warm-up call is the measurement itself when it takes over :data:`SINGLE_CALL_CAP_S`
    or when the budget leaves room for no further call. The address-space cap is refreshed
    first, so that memory other processes took since the last call is not counted on.
    """
    cap = cap_address_space()
    try:
        start = time.perf_counter()
        out = call()
        first = time.perf_counter() - start
        repeats = 0 if first > SINGLE_CALL_CAP_S else min(plan.repeats, int(plan.budget_s / first))
        times = []
        for _ in range(repeats):
            del out
            start = time.perf_counter()
            out = call()
            times.append(time.perf_counter() - start)
    except Exception as exc:  # any failure of one method is reported, not fatal
        gc.collect()
        if is_oom(exc):
            limit = "" if cap is None else f" of {cap / 2**30:.1f} GiB"
            return Timing(problem=f"OOM (allocation over the address-space cap{limit})")
        if isinstance(exc, AggregatorError):
            return Timing(problem=f"n/a ({str(exc).split(': ', 1)[-1]})")
        return Timing(problem=f"error ({type(exc).__name__}: {str(exc)[:120]})")
    if not times:
        times = [first]
    ms = float(np.median(times)) * 1e3
    if hasattr(out, "update"):
        out = out.update
    return Timing(ms=ms, calls=len(times), output=as_tensor(out))


def mem_available() -> int:
    """Bytes the kernel reports as available (MemAvailable), 0 if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cap_address_space() -> int | None:
    """Cap this process's address space at its current size plus what is free, minus a margin.

    An allocation beyond it then raises (torch RuntimeError / numpy MemoryError) instead of
    the kernel's OOM killer picking a process, possibly another one. Returns the cap in bytes.
    """
    try:
        with open("/proc/self/status") as fh:
            vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    except (OSError, StopIteration):
        return None
    avail = mem_available()
    if avail == 0:
        return None
    cap = vm + max(avail - MEMORY_MARGIN, 0)
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.RLIM_INFINITY))
    return cap


def make_updates(n: int, d: int, seed: int) -> Tensor:
    """Random normal updates ``[n, d]`` float32 (a random block repeated along d)."""
    gen = torch.Generator().manual_seed(seed)
    block = torch.randn(n, min(d, RANDOM_BLOCK), generator=gen)
    if d == block.shape[1]:
        return block
    out = torch.empty(n, d)
    for start in range(0, d, block.shape[1]):
        width = min(block.shape[1], d - start)
        out[:, start : start + width] = block[:, :width]
    return out


# ---------------------------------------------------------------------------- other libraries


def load_flower() -> tuple[types.ModuleType | None, str]:
    """``flwr.server.strategy.aggregate`` and a description, or None and why not."""
    try:
        module = importlib.import_module("flwr.server.strategy.aggregate")
    except Exception as exc:  # a missing or broken install is reported
        return None, f"flwr: not timed ({type(exc).__name__}: {exc})"
    return module, f"flwr {importlib.metadata.version('flwr')}"


def load_byzfl() -> tuple[types.ModuleType | None, str]:
    """byzfl's aggregators module and a description, or None and why not."""
    try:
        version = importlib.metadata.version("byzfl")
    except importlib.metadata.PackageNotFoundError:
        return None, "byzfl: not installed, not timed"
    try:
        return importlib.import_module("byzfl"), f"byzfl {version}"
    except Exception as exc:  # fall back to the aggregators subpackage
        reason = f"{type(exc).__name__}: {exc}"
    for key in [k for k in sys.modules if k == "byzfl" or k.startswith("byzfl.")]:
        del sys.modules[key]
    spec = importlib.util.find_spec("byzfl")
    if spec is None or spec.submodule_search_locations is None:
        return None, f"byzfl: not timed ({reason})"
    package = types.ModuleType("byzfl")  # an empty package: skip byzfl/__init__.py
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["byzfl"] = package
    try:
        module = importlib.import_module("byzfl.aggregators")
    except Exception as exc:
        del sys.modules["byzfl"]
        return None, f"byzfl: not timed ({reason}; byzfl.aggregators: {exc})"
    return module, f"byzfl {version} (byzfl.aggregators only; `import byzfl` fails: {reason})"


SEMANTIC_NOTES: tuple[str, ...] = (
    "flwr mean: `aggregate` (FedAvg's weighted average) with every weight 1.",
    "flwr krum / multi-krum: n-f-2 neighbours like ours, but distances in float32 "
    "(np.linalg.norm of the float32 difference) over all n^2 ordered pairs (ours: float64, "
    "n(n-1)/2 pairs); multi-krum averages to_keep = n - f updates (ours: m = n - f).",
    "flwr bulyan: recomputes the full n^2 distance matrix in each of its theta = n-2f Krum "
    "steps (ours: one matrix, masked); its last stage breaks distance-to-median ties "
    "arbitrarily (argpartition), ours toward the smaller value.",
    "flwr trimmed mean (FedTrimmedAvg) trims int(beta*n) per end: called with beta = "
    "(f+0.5)/n so it trims exactly f, as ours with beta = f/n and byzfl TrMean(f) do.",
    "flwr median: np.median, mean of the two middle values for even n (same as ours).",
    "byzfl krum / multi-krum: scores each update by its n-f-1 nearest neighbours (ours and "
    "Flower: n-f-2), averaged instead of summed; distances from torch.cdist, which for more "
    "than 25 rows uses the float32 Gram form |a|^2+|b|^2-2ab that ours avoids: its choice "
    "may differ from ours.",
    "byzfl median: torch.quantile(q=0.5), mean of the two middle values for even n (same).",
    "byzfl geometric median: GeometricMedian() at its defaults, 3 Weiszfeld steps from z = 0 "
    "with nu = 0.1 (ours: from the mean until the objective changes by under 1e-7, at most 100 "
    "steps, nu = 1e-6); 3 steps from 0 are not the geometric median to 1e-4, hence 'NO'.",
    "byzfl has no Bulyan and Flower no geometric median: those are compared with one library.",
    "ours includes the base-class row validation (finite, |x| <= 1e15) on every call; Flower "
    "and byzfl validate nothing.",
    "main table: trimmed_mean runs with beta = f/n (trims f, as compared); its cost does not "
    "depend on beta. noisy_median times the server step only (noise is client-side); "
    "diversefl's guiding gradients and fltrust's root gradient are precomputed tensors "
    "handed over by the context (their computation is not timed).",
)


@dataclass
class Theirs:
    """One of their implementations: label, how to call it, and an optional cost estimate."""

    method: str  # one of COMPARED
    library: str
    call: Callable[[], Any]
    estimate_s: Callable[[], tuple[float, bool]] | None = None  # (seconds, lower_bound)


def flower_pair_cost(flwr_agg: types.ModuleType, rows: np.ndarray) -> float:
    """Seconds per ordered pair of Flower's distance loop (``_compute_distances``), measured."""
    k = min(4, rows.shape[0])
    weights = [[rows[i]] for i in range(k)]
    flwr_agg._compute_distances(weights)  # warm-up
    start = time.perf_counter()
    flwr_agg._compute_distances(weights)
    return (time.perf_counter() - start) / (k * k)


def flower_methods(flwr_agg: types.ModuleType, updates: Tensor, f: int) -> list[Theirs]:
    """Flower's mean, median, trimmed mean, Krum, Multi-Krum and Bulyan on ``updates``."""
    n = updates.shape[0]
    rows = updates.numpy()  # zero-copy view; each client's "model" is one flat layer
    results = [([rows[i]], 1) for i in range(n)]
    theta = n - 2 * f
    pair_cost: list[float] = []

    def pairs_s(pairs: int) -> float:
        if not pair_cost:
            pair_cost.append(flower_pair_cost(flwr_agg, rows))
        return pairs * pair_cost[0]

    def krum(keep: int) -> Callable[[], Any]:
        return lambda: flwr_agg.aggregate_krum(list(results), num_malicious=f, to_keep=keep)

    krum_pairs = n * n
    bulyan_pairs = sum(m * m for m in range(n - theta + 1, n + 1))
    return [
        Theirs("mean", "flwr", lambda: flwr_agg.aggregate(results)),
        Theirs("median", "flwr", lambda: flwr_agg.aggregate_median(results)),
        Theirs(
            "trimmed_mean",
            "flwr",
            lambda: flwr_agg.aggregate_trimmed_avg(results, proportiontocut=(f + 0.5) / n),
        ),
        Theirs("krum", "flwr", krum(0), lambda: (pairs_s(krum_pairs), False)),
        Theirs("multi_krum", "flwr", krum(n - f), lambda: (pairs_s(krum_pairs), False)),
        Theirs(
            "bulyan",
            "flwr",
            # aggregate_bulyan pops from its list: give it a fresh one (n pointers) each call
            lambda: flwr_agg.aggregate_bulyan(list(results), f, flwr_agg.aggregate_krum, to_keep=0),
            lambda: (pairs_s(bulyan_pairs), True),
        ),
    ]


def byzfl_methods(byzfl_agg: types.ModuleType, updates: Tensor, f: int) -> list[Theirs]:
    """byzfl's mean, median, trimmed mean, Krum, Multi-Krum and geometric median."""
    rules = {
        "mean": byzfl_agg.Average(),
        "median": byzfl_agg.Median(),
        "trimmed_mean": byzfl_agg.TrMean(f=f),
        "krum": byzfl_agg.Krum(f=f),
        "multi_krum": byzfl_agg.MultiKrum(f=f),
        "geomed": byzfl_agg.GeometricMedian(),
    }
    return [Theirs(name, "byzfl", lambda rule=rule: rule(updates)) for name, rule in rules.items()]


def their_methods(
    flwr_agg: types.ModuleType | None,
    byzfl_agg: types.ModuleType | None,
    updates: Tensor,
    f: int,
) -> list[Theirs]:
    """Every compared rule of both libraries on ``updates``, ready to call, by method."""
    out = [] if flwr_agg is None else flower_methods(flwr_agg, updates, f)
    out += [] if byzfl_agg is None else byzfl_methods(byzfl_agg, updates, f)
    return sorted(out, key=lambda entry: COMPARED.index(entry.method))


def time_theirs(entry: Theirs, plan: Plan) -> Timing:
    """Measure one of theirs, or estimate it when one call would exceed the cap."""
    if entry.estimate_s is not None:
        seconds, lower = entry.estimate_s()
        if seconds > SINGLE_CALL_CAP_S:
            return Timing(ms=seconds * 1e3, estimated=True, lower_bound=lower)
    return measure(entry.call, plan)


# ---------------------------------------------------------------------------- our side


def build_ours(name: str, n: int, f: int) -> aggregators.Aggregator:
    """The registered aggregator ``name`` (or pipeline ``pre+...+rule``) with the settings this
    benchmark uses."""
    if name in VARIANTS:
        return aggregators.get(name.split("[")[0], **VARIANTS[name])
    if "+" in name:
        *pre, rule = name.split("+")
        pipeline = build_method(rule, {}, list(pre))
        assert isinstance(pipeline, aggregators.Aggregator)
        return pipeline
    if name == "trimmed_mean":
        return aggregators.get(name, beta=f / n)  # trims floor(beta*n) = f, like theirs
    return aggregators.get(name)


def time_ours(name: str, updates: Tensor, f: int, seed: int, plan: Plan) -> Timing:
    """Measure ``agg(updates, ctx)`` for the registered aggregator ``name``."""
    n = updates.shape[0]
    try:
        agg = build_ours(name, n, f)
        agg.check(n, f)
    except AggregatorError as exc:
        reason = str(exc).split(": ", 1)[-1]
        return Timing(problem=f"n/a ({reason})")
    byzantine = torch.zeros(n, dtype=torch.bool)
    byzantine[:f] = True
    hooks: dict[str, Any] = {"byzantine": byzantine}
    try:
        if agg.needs_guiding:
            guiding = updates.flip(0)  # another client's row: about half pass DiverseFL's test
            hooks["guiding_fn"] = lambda: guiding
        if "server_grad_fn" in CONTEXT_FIELDS:  # FLTrust: a root-data gradient, precomputed
            g0 = updates[f:].mean(0)
            hooks["server_grad_fn"] = lambda idx: g0
            hooks["shared_samples"] = torch.arange(10 * n)
    except Exception as exc:
        if is_oom(exc):
            return Timing(problem="OOM (allocation over the memory cap)")
        raise
    hooks = {k: v for k, v in hooks.items() if k in CONTEXT_FIELDS}
    ctx = RoundContext(round=1, n=n, f=f, generator=torch.Generator().manual_seed(seed), **hooks)

    def call() -> Any:
        ctx.__dict__.pop("guiding", None)  # the guiding is cached per context: drop it
        return agg(updates, ctx)

    return measure(call, plan)  # the guiding copy and g0 are freed on return


# ---------------------------------------------------------------------------- one run


FLOOR = "floor: updates.sum(0)"  # the row of the memory-bandwidth floor in the tables


@dataclass
class Compared:
    """One of theirs at one size and thread count, with our time for the same rule."""

    entry: Theirs
    n: int
    f: int
    d: int
    threads: int
    timing: Timing
    same: str


@dataclass
class Results:
    """Everything one run measured, keyed by (method, n, d, threads)."""

    ours: dict[tuple[str, int, int, int], Timing] = field(default_factory=dict)
    theirs: list[Compared] = field(default_factory=list)
    skipped: dict[tuple[int, int], str] = field(default_factory=dict)


def measure_size(
    n: int,
    f: int,
    d: int,
    args: argparse.Namespace,
    plan: Plan,
    libs: tuple[types.ModuleType | None, types.ModuleType | None],
    results: Results,
) -> None:
    """Time ours (and theirs) on one ``[n, d]`` input at every thread count asked for."""
    updates = make_updates(n, d, args.seed)
    names = method_names(args)
    for threads in args.threads:
        torch.set_num_threads(threads)
        where = f"  n={n} d={d:,} threads={threads}"
        results.ours[(FLOOR, n, d, threads)] = measure(lambda: updates.sum(0), plan)
        for name in names:
            timing = results.ours[(name, n, d, threads)] = time_ours(
                name, updates, f, args.seed, plan
            )
            print(f"{where} ours {name}: {timing.cell()} {timing.problem}", flush=True)
        for entry in their_methods(*libs, updates, f):
            if entry.method not in names:
                continue
            timing = time_theirs(entry, plan)
            ref = results.ours.get((entry.method, n, d, threads), Timing())
            same = agreement(ref, timing)
            results.theirs.append(Compared(entry, n, f, d, threads, timing, same))
            timing.output = None
            label = f"{entry.library} {entry.method}"
            print(f"{where} {label}: {timing.cell()} {timing.problem} same={same}", flush=True)
        for name in names:  # the outputs were kept only for the comparison
            results.ours[(name, n, d, threads)].output = None


# ---------------------------------------------------------------------------- tables


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print an aligned text table (first column left-aligned, the others right-aligned)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = str(cells[0]).ljust(widths[0])
        rest = [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def agreement(ours: Timing, theirs: Timing) -> str:
    """Whether both results exist and match (relative 1e-4, absolute 1e-5 of ours' scale)."""
    if ours.output is None or theirs.output is None:
        return "-"
    a, b = ours.output.float(), theirs.output.float()
    if a.shape != b.shape:
        return "shape differs"
    scale = float(a.abs().max()) if a.numel() else 0.0
    return "yes" if torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(scale, 1e-12)) else "NO"


def print_ours(
    results: Results, names: Sequence[str], columns: Sequence[tuple[int, int, int]], threads: int
) -> None:
    """The table of our times at one thread count, with the floor row and the footnotes."""
    print(f"\nOurs, ms per call, {threads} thread(s) (agg(updates, ctx), validation included):")
    header = ["aggregator"] + [f"n={n} d={d:,}" for n, _, d in columns]
    rows, footnotes = [], []
    for name in [*names, FLOOR]:
        cells = [name + (" (beta=f/n)" if name == "trimmed_mean" else "")]
        for n, f, d in columns:
            timing = results.ours.get((name, n, d, threads))
            if timing is None:
                cells.append("skipped")
                continue
            cells.append(timing.cell())
            if timing.problem:
                footnotes.append(f"{name} at n={n}, f={f}, d={d:,}: {timing.problem}")
        rows.append(cells)
    print_table(header, rows)
    for (n, d), why in results.skipped.items():
        footnotes.append(f"n={n} d={d:,} skipped: {why}")
    for note in footnotes:
        print(f"  {note}")


def comparison_row(results: Results, item: Compared) -> list[str]:
    """One row of the theirs-vs-ours table."""
    ref = results.ours.get((item.entry.method, item.n, item.d, item.threads), Timing(problem="-"))
    ratio = target = "-"
    if ref.ms is not None and item.timing.ms is not None:
        value = item.timing.ms / ref.ms
        prefix = "~>=" if item.timing.lower_bound else ("~" if item.timing.estimated else "")
        ratio = f"{prefix}{value:.2f}"
        target = "PASS" if value >= SPEEDUP_TARGET else "FAIL"
    return [
        item.entry.method,
        item.entry.library,
        str(item.threads),
        str(item.n),
        str(item.f),
        f"{item.d:,}",
        ref.cell(),
        item.timing.cell(),
        ratio,
        target,
        item.timing.problem or item.same,
    ]


def print_theirs(results: Results) -> None:
    """The theirs-vs-ours table (every thread count) and a PASS count per library."""
    print(
        f"\nTheirs vs ours, ms per call; ratio = theirs / ours; target ours >= "
        f"{SPEEDUP_TARGET:g}x faster:"
    )
    header = ["method", "library", "thr", "n", "f", "d", "ours", "theirs", "ratio", "target"]
    rows = [comparison_row(results, item) for item in results.theirs]
    print_table([*header, "same result"], rows)
    print("flwr: torch -> numpy conversion (zero-copy) excluded from its times.")
    for library in sorted({item.entry.library for item in results.theirs}):
        mine = [row for row in rows if row[1] == library and row[9] != "-"]
        passed = sum(row[9] == "PASS" for row in mine)
        print(f"{library}: {passed} of {len(mine)} comparisons at least {SPEEDUP_TARGET:g}x")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, or '?' where unavailable."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: n=23, d <= 199,210")
    parser.add_argument("--skip-huge", action="store_true", help="leave out d = 9,231,114")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1], help="torch thread counts (default 1)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--n", type=int, nargs="+", choices=[n for n, _ in FEDERATIONS], help="only these n"
    )
    parser.add_argument("--d", type=int, nargs="+", choices=list(SIZES), help="only these d")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=[*aggregators.REGISTRY, *PIPELINES, *VARIANTS],
        help="only these of ours (and of theirs, those among " + ", ".join(COMPARED) + ")",
    )
    args = parser.parse_args(argv)
    if min(args.threads) < 1:
        parser.error(f"--threads must be >= 1, got {min(args.threads)}")
    return args


def method_names(args: argparse.Namespace) -> list[str]:
    """Our rules to time: the registered ones in registry order, then the pipelines and
    DiverseFL's bounds."""
    return [
        name
        for name in (*aggregators.REGISTRY, *PIPELINES, *VARIANTS)
        if name in (args.methods or [name])
    ]


def print_preamble(args: argparse.Namespace, descriptions: Sequence[str], repeats: int) -> None:
    """Versions, load, memory cap and how the cells are measured."""
    cap = cap_address_space()
    threads = " and ".join(str(t) for t in args.threads)
    print(
        f"torch {torch.__version__} ({threads} thread(s)), numpy {np.__version__}, "
        f"{os.cpu_count()} CPU(s), load average at start: {load_average()}"
    )
    for line in descriptions:
        print(line)
    print(
        f"memory available: {mem_available() / 2**30:.1f} GiB; address space capped at "
        + ("(no cap)" if cap is None else f"{cap / 2**30:.1f} GiB")
        + f" (re-set before each call: what is free now minus {MEMORY_MARGIN >> 30} GiB)"
    )
    print(
        "ms per call: median of up to "
        f"{repeats} calls after a warm-up (d = {HUGE_D:,}: up to 2); "
        f"* = one timed call; ~ = estimated, not run (~>= lower bound)\n"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print both tables."""
    args = parse_args(argv)
    feds = [(n, f) for n, f in FEDERATIONS[: 1 if args.quick else None] if n in (args.n or [n])]
    sizes = [d for d in SIZES if not (d == HUGE_D and (args.quick or args.skip_huge))]
    sizes = [d for d in sizes if d in (args.d or [d])]
    repeats = args.repeats or (3 if args.quick else 7)
    normal = Plan(repeats=repeats, budget_s=1.5 if args.quick else 6.0)
    huge = Plan(repeats=min(repeats, 2), budget_s=20.0)
    flwr_agg, flwr_desc = load_flower()
    byzfl_agg, byzfl_desc = load_byzfl()
    print_preamble(args, [flwr_desc, byzfl_desc], repeats)
    started = time.perf_counter()
    columns = [(n, f, d) for n, f in feds for d in sizes]
    results = Results()
    for n, f, d in columns:
        need, avail = n * d * 4, mem_available()
        if need * 2 > avail:
            results.skipped[(n, d)] = (
                f"needs {need / 2**30:.1f} GiB x2, {avail / 2**30:.1f} available"
            )
            print(f"n={n} d={d:,}: skipped ({results.skipped[(n, d)]})", flush=True)
            continue
        tick = time.perf_counter()
        plan = huge if d == HUGE_D else normal
        measure_size(n, f, d, args, plan, (flwr_agg, byzfl_agg), results)
        print(
            f"n={n} f={f} d={d:,}: {time.perf_counter() - tick:.0f} s (load {load_average()})",
            flush=True,
        )
        gc.collect()
    for threads in args.threads:
        print_ours(results, method_names(args), columns, threads)
    if results.theirs:
        print_theirs(results)
    for note in SEMANTIC_NOTES:
        print(f"note: {note}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average at end: {load_average()}")


if __name__ == "__main__":
    main()
